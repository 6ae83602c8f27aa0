"""Transcripts of a video: sidecar files (.srt, .vtt, .txt) or an embedded text subtitle stream.

A video's transcript becomes each clip's `txt` member: the text of the cues that overlap the
clip window (`text_for_window`). Sidecars win over embedded subtitles because a user who put a
file next to the video meant it; a broken sidecar raises rather than being silently replaced.
"""

from __future__ import annotations

import bisect
import codecs
import functools
import html
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import pysrt
import webvtt

from pipeline import ffmpeg_bin
from pipeline.errors import DecodeError, TranscriptError

TranscriptSource = Literal["srt", "vtt", "txt", "embedded", "none"]

# Longest ffmpeg may take to pull a subtitle stream out of a container (demux only, no decode).
EMBEDDED_TIMEOUT_S = 300.0

# Byte-order marks, longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# HTML-like tags (<i>, <font color=..>, WebVTT <c.red>, <v Speaker>, <00:01.000>) and ASS/SSA
# override blocks ({\an8}, {\i1}). A tag starts with a letter, digit or "/" right after "<", so
# "a < b" and a plain "{" in dialogue are left alone.
_MARKUP = re.compile(r"</?[A-Za-z0-9][^<>\n]*>|\{\\[^}\n]*\}")
# Language-tagged sidecars as yt-dlp and others write them: "<stem>.en.srt", "<stem>.pt-BR.vtt".
_LANG_TAG = re.compile(r"[A-Za-z0-9_-]{1,16}")
_TIMED_SIDECARS = (".srt", ".vtt")


@dataclass(frozen=True)
class Cue:
    """One subtitle cue: text shown from `start` to `end` seconds."""

    start: float
    end: float
    text: str


@dataclass
class Transcript:
    """The cues of one video, sorted by start time.

    `timed` is False for plain-text transcripts (.txt): they hold a single cue with the whole
    text and meaningless times; `text_for_window` spreads its words over the video instead.
    Treat it as read-only: `word_offsets` is computed once.
    """

    cues: list[Cue]
    source: TranscriptSource
    timed: bool = True
    notes: tuple[str, ...] = ()  # cues that were skipped and why, for the video's warnings

    @functools.cached_property
    def word_offsets(self) -> tuple[list[str], list[int], int]:
        """Words of an untimed transcript, each word's character offset, and the total length.

        Offsets are positions in the words joined by single spaces. Computed once per transcript
        because `text_for_window` is called for every clip of a possibly hour-long video.
        """
        words = " ".join(cue.text for cue in self.cues).split()
        offsets: list[int] = []
        position = 0
        for word in words:
            offsets.append(position)
            position += len(word) + 1
        return words, offsets, max(position - 1, 0)


def read_text_file(path: Path) -> str:
    """Read a text file whose encoding nobody recorded, with newlines normalised to "\\n".

    Subtitle files come from everywhere: a byte-order mark decides when present (UTF-8,
    UTF-16 LE/BE, UTF-32 LE/BE); otherwise strict UTF-8 is tried, and text that is not valid
    UTF-8 is read as Windows-1252, the usual legacy single-byte encoding (bytes it leaves
    undefined become U+FFFD). Raises TranscriptError naming the file when it cannot be read,
    its BOM contradicts its bytes, or it holds NUL characters (binary, or UTF-16 without BOM).
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TranscriptError(f"cannot read transcript {path}: {err.strerror or err}") from err
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom):].decode(encoding)
            except UnicodeDecodeError as err:
                raise TranscriptError(
                    f"{path}: starts with a {encoding} byte-order mark but is not valid "
                    f"{encoding} ({err.reason} at byte {err.start + len(bom)}); re-save it as UTF-8"
                ) from err
            break
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("cp1252", errors="replace")
    if "\x00" in text:
        raise TranscriptError(
            f"{path}: contains NUL characters, so it is binary or UTF-16 without a byte-order "
            f"mark; re-save it as UTF-8"
        )
    return text.replace("\r\n", "\n").replace("\r", "\n")


# A character reference with its terminating ";" (&amp; &#233; &#x2014;). html.unescape alone
# also expands HTML's legacy names without ";", turning plain subtitle text such as
# "Salt &notes" into "Salt ¬es" and "&copy holders" into "© holders".
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
# ASS/SSA escapes that survive conversion to SubRip: \N and \n line breaks, \h hard space.
_ASS_ESCAPES = re.compile(r"\\[Nnh]")


def clean_text(text: str) -> str:
    """Cue text without markup or entities, whitespace collapsed to single spaces."""
    text = _ASS_ESCAPES.sub(" ", _MARKUP.sub("", text))
    return " ".join(_ENTITY.sub(lambda m: html.unescape(m.group(0)), text).split())


def _timed(cues: list[Cue], source: TranscriptSource, name: str) -> Transcript:
    """Sorted cues without empty ones. A cue that ends before it starts is skipped with a
    note (as players skip it); only a file whose every cue is reversed raises."""
    reversed_ = [cue for cue in cues if cue.end < cue.start]
    messages = [f"cue {cue.text[:40]!r} ends ({cue.end:.3f} s) before it starts "
                f"({cue.start:.3f} s)" for cue in reversed_]
    if reversed_ and len(reversed_) == len(cues):
        raise TranscriptError(f"{name}: {messages[0]}")
    kept = [cue for cue in cues if cue.text and cue.end >= cue.start]
    notes = tuple(f"{name}: skipped {message}" for message in messages)
    return Transcript(sorted(kept, key=lambda c: (c.start, c.end)), source, timed=True,
                      notes=notes)


def parse_srt(text: str, name: str, source: TranscriptSource = "srt") -> Transcript:
    """Parse SubRip text; `name` identifies it in errors.

    Like video players, skips a broken cue and keeps the rest; text that yields no cue at all
    is malformed and raises TranscriptError with the strict parser's reason.
    """
    items = pysrt.from_string(text)
    if not items and text.strip():
        try:
            pysrt.from_string(text, error_handling=pysrt.SubRipFile.ERROR_RAISE)
            reason = "no cue with a 'start --> end' timing line"
        except pysrt.InvalidItem as err:  # args: (line number, the block's text)
            reason = f"cannot parse the block ending at line {err.args[0]}"
        except (pysrt.Error, ValueError) as err:
            reason = _reason(err)
        raise TranscriptError(f"{name}: malformed SubRip subtitles, no cue could be read "
                              f"({reason})")
    cues = [Cue(item.start.ordinal / 1000.0, item.end.ordinal / 1000.0, clean_text(item.text))
            for item in items]
    return _timed(cues, source, name)


def parse_vtt(text: str, name: str) -> Transcript:
    """Parse WebVTT text; `name` identifies it in errors.

    A missing "WEBVTT" header raises TranscriptError; a broken cue is skipped, but cue blocks
    that yield no cue at all raise TranscriptError with the strict parser's reason.
    """
    try:
        captions = webvtt.from_string(text).captions
    except (webvtt.errors.MalformedFileError, webvtt.errors.MalformedCaptionError) as err:
        raise TranscriptError(f"{name}: malformed WebVTT subtitles ({_reason(err)})") from err
    if not captions and _has_vtt_cue_blocks(text):
        try:
            webvtt.from_string(text, strict=True)
            reason = "no cue with a 'start --> end' timing line"
        except (webvtt.errors.MalformedFileError, webvtt.errors.MalformedCaptionError) as err:
            reason = _reason(err)
        raise TranscriptError(f"{name}: malformed WebVTT subtitles, no cue could be read "
                              f"({reason})")
    cues = [Cue(_vtt_seconds(c.start), _vtt_seconds(c.end), clean_text(c.raw_text))
            for c in captions]
    return _timed(cues, "vtt", name)


def _has_vtt_cue_blocks(text: str) -> bool:
    """Whether the text has blocks besides the header, comments, styles and regions."""
    blocks = [block.strip() for block in re.split(r"\n\s*\n", text) if block.strip()]
    return any(not block.startswith(("NOTE", "STYLE", "REGION")) for block in blocks[1:])


def _vtt_seconds(stamp: str) -> float:
    """Seconds of a WebVTT timestamp "HH:MM:SS.mmm"; from the string because webvtt-py 0.6's
    `start_in_seconds` drops the milliseconds."""
    seconds = 0.0
    for part in stamp.split(":"):
        seconds = seconds * 60.0 + float(part)
    return seconds


def _reason(err: Exception) -> str:
    """A parser exception as one short line (pysrt puts the offending cue's text in args)."""
    reason = " ".join(" ".join(str(arg) for arg in err.args).split()) or type(err).__name__
    return reason if len(reason) <= 120 else reason[:117] + "..."


def load_sidecar(path: Path) -> Transcript:
    """Load a .srt, .vtt or .txt transcript (extension matched case-insensitively).

    SRT and VTT cue text loses its markup (<i>, {\\an8}, <c.color>, ...) and extra whitespace;
    cues left empty are dropped. A .txt file is an untimed transcript, whitespace collapsed.
    Raises TranscriptError naming the file and the parser's reason when it is malformed.
    """
    kind = path.suffix.lower()
    if kind not in (".srt", ".vtt", ".txt"):
        raise TranscriptError(f"{path}: unsupported transcript type {path.suffix!r}; "
                              f"use .srt, .vtt or .txt")
    text = read_text_file(path)
    if kind == ".srt":
        return parse_srt(text, str(path))
    if kind == ".vtt":
        return parse_vtt(text, str(path))
    words = " ".join(text.split())
    return Transcript([Cue(0.0, 0.0, words)] if words else [], "txt", timed=False)


@functools.cache
def _is_text_codec(name: str) -> bool:
    """Whether ffmpeg describes the subtitle codec as text (subrip, ass, mov_text, webvtt, ...)
    rather than bitmaps (dvd_subtitle, hdmv_pgs_subtitle), which would need OCR."""
    try:
        return bool(av.codec.Codec(name, "r").text_sub)
    except av.codec.codec.UnknownCodecError:
        return False


def extract_embedded(video_path: Path, ffmpeg_binary: str | None = None) -> Transcript | None:
    """The first text subtitle stream of a container as a Transcript, or None if it has none.

    Bitmap subtitle streams are skipped (None if there is no text one). The stream is converted
    to SubRip by the ffmpeg CLI (`ffmpeg_binary`, default `ffmpeg_bin.ffmpeg_binary()`), which
    reads every text format ffmpeg knows and renders styling as tags that we then strip.
    Raises DecodeError if the container cannot be opened and TranscriptError if the conversion
    fails or times out.
    """
    try:
        with av.open(str(video_path)) as container:
            found = next(((s.index, s.codec_context.name) for s in container.streams.subtitles
                          if _is_text_codec(s.codec_context.name)), None)
    except av.error.FFmpegError as err:
        raise DecodeError(f"cannot open {video_path} to look for subtitles: {err}") from err
    if found is None:
        return None
    index, codec = found
    # ASS/SSA is read as ASS: converted to SubRip, vector drawings ({\p1}m 0 0 l 100 0 ...)
    # would come out as words of every cue they overlap.
    ass = codec in ("ass", "ssa")
    command = [ffmpeg_binary or ffmpeg_bin.ffmpeg_binary(), "-nostdin", "-v", "error",
               "-i", os.fspath(video_path), "-map", f"0:{index}", "-f",
               "ass" if ass else "srt", "-"]
    try:
        result = subprocess.run(command, capture_output=True, timeout=EMBEDDED_TIMEOUT_S,
                                check=False)
    except subprocess.TimeoutExpired as err:
        raise TranscriptError(f"{video_path}: extracting subtitle stream {index} took over "
                              f"{EMBEDDED_TIMEOUT_S:.0f} s") from err
    if result.returncode != 0:
        reason = ffmpeg_bin.stderr_summary(result.stderr.decode("utf-8", errors="replace"))
        raise TranscriptError(f"{video_path}: ffmpeg could not extract subtitle stream {index}: "
                              f"{reason or f'exit status {result.returncode}'}")
    text = result.stdout.decode("utf-8", errors="replace").replace("\r\n", "\n")
    name = f"{video_path} (subtitle stream {index})"
    if ass:
        return parse_ass(text, name)
    return parse_srt(text, name, source="embedded")


# Override blocks that switch vector drawing on ({\p1}, {\an7\p2}) up to one that switches
# it off ({\p0}) or the end of the event: shapes, not words.
_ASS_DRAWING = re.compile(r"\{[^}]*\\p[1-9][^}]*\}.*?(?:\{[^}]*\\p0[^}]*\}|$)", re.S)


# The event fields when a script has no "Format:" line (the ASS v4+ default).
_ASS_FIELDS = ["Layer", "Start", "End", "Style", "Name", "MarginL", "MarginR", "MarginV",
               "Effect", "Text"]


def _ass_seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.strip().split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def parse_ass(text: str, name: str) -> Transcript:
    """The Dialogue events of an ASS/SSA script as cues (drawings dropped, markup stripped)."""
    fields: list[str] | None = None
    cues: list[Cue] = []
    for line in text.split("\n"):
        key, _, value = line.partition(":")
        if key.strip() == "Format" and fields is None and "Text" in value:
            fields = [field.strip() for field in value.split(",")]
        elif key.strip() == "Dialogue":
            names = fields or _ASS_FIELDS
            parts = value.split(",", len(names) - 1)
            if len(parts) != len(names):
                continue  # a broken event: skipped, like players do
            event = dict(zip(names, parts, strict=True))
            try:
                start, end = _ass_seconds(event["Start"]), _ass_seconds(event["End"])
            except (KeyError, ValueError):
                continue
            cues.append(Cue(start, end, clean_text(_ASS_DRAWING.sub(" ", event["Text"]))))
    return _timed(cues, "embedded", name)


def sidecar_path(video_path: Path) -> Path | None:
    """The sidecar transcript of a video: "<stem>.srt", then "<stem>.<lang>.srt" (first by
    name), then the same for .vtt, then "<stem>.txt"; extensions in any case. Timed files win
    over untimed ones; language-tagged .txt files are not considered, since "<stem>.notes.txt"
    is as likely as a transcript."""
    stem = video_path.stem
    exact: dict[str, str] = {}
    tagged: dict[str, list[str]] = {}
    with os.scandir(video_path.parent) as entries:
        for entry in entries:
            base, ext = os.path.splitext(entry.name)
            ext = ext.lower()
            if not entry.is_file() or not base.startswith(stem):
                continue
            if base == stem:
                exact.setdefault(ext, entry.name)
            elif (ext in _TIMED_SIDECARS and base[len(stem)] == "."
                  and _LANG_TAG.fullmatch(base[len(stem) + 1:])):
                tagged.setdefault(ext, []).append(entry.name)
    for ext in _TIMED_SIDECARS:
        if ext in exact:
            return video_path.parent / exact[ext]
        if ext in tagged:
            return video_path.parent / min(tagged[ext])
    return video_path.parent / exact[".txt"] if ".txt" in exact else None


def find_transcript(video_path: Path, ffmpeg_binary: str | None = None) -> Transcript:
    """The transcript of a video: its sidecar file if any, else its embedded text subtitles,
    else an empty timed transcript with source "none". Errors of `load_sidecar` and
    `extract_embedded` propagate: a broken transcript is reported, not silently skipped."""
    sidecar = sidecar_path(video_path)
    if sidecar is not None:
        return load_sidecar(sidecar)
    embedded = extract_embedded(video_path, ffmpeg_binary)
    return embedded if embedded is not None else Transcript([], "none", timed=True)


def text_for_window(transcript: Transcript, start: float, end: float,
                    video_duration: float) -> str:
    """The transcript text of the window [start, end) seconds, words separated by one space.

    Timed: the cues that overlap the window, `cue.start < end and cue.end > start`, in time
    order; a cue 2.0-3.0 s is in [1, 3) and [2, 4) but not in [0, 2) or [3, 5).

    Untimed (.txt): nothing says when a word is spoken, so the words are spread evenly by
    character over the video: word i, which starts at character c_i of the words joined by
    single spaces (length L), is placed at `video_duration * c_i / L` seconds, and a window
    gets the words placed in [start, end). Windows that tile the video thus share the text
    out in order, each word exactly once. `video_duration` is only used for untimed ones.
    """
    if transcript.timed:
        return " ".join(c.text for c in transcript.cues if c.start < end and c.end > start)
    words, offsets, total = transcript.word_offsets
    if not words:
        return ""
    if video_duration <= 0:
        raise ValueError(f"video_duration must be > 0 to place an untimed transcript, "
                         f"got {video_duration}")

    def place(offset: int) -> float:
        return video_duration * offset / total

    first = bisect.bisect_left(offsets, start, key=place)
    last = bisect.bisect_left(offsets, end, key=place)
    return " ".join(words[first:last])
