"""Transcripts of a video: sidecar files (.srt, .vtt, .txt) or an embedded text subtitle stream.

A video's transcript becomes each clip's `txt` member: the text of the cues that overlap the
clip window (`text_for_window`). Sidecars win over embedded subtitles because a user who put a
file next to the video meant it; a broken sidecar raises rather than being silently replaced.

Transcripts come from anywhere, so reading one is bounded: only a regular file is opened (a
FIFO would block forever), at most `MAX_TRANSCRIPT_BYTES` of it (or of an embedded stream) and
`MAX_CUES` cues are read, and a window's text is cut to `MAX_WINDOW_TEXT_BYTES`. Past a limit
the text is dropped or cut with a message, never the video. Messages name files relative to
the input folder, as video ids are.
"""

from __future__ import annotations

import bisect
import codecs
import functools
import html
import io
import os
import re
import stat
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import av
import pysrt
import webvtt

from pipeline import ffmpeg_bin
from pipeline.discover import leaves_folder, refusal
from pipeline.errors import DecodeError, TranscriptError

TranscriptSource = Literal["srt", "vtt", "txt", "embedded", "none"]

# Longest ffmpeg may take to pull a subtitle stream out of a container (demux only, no decode).
EMBEDDED_TIMEOUT_S = 300.0
# A transcript (sidecar file, or subtitle stream as SubRip) larger than this is not read: dense
# subtitles take ~30 bytes a second, so 20 MB is over 150 hours; a 1 GB sparse file would
# otherwise take a worker's memory with it.
MAX_TRANSCRIPT_BYTES = 20_000_000
# More cues than this is not a transcript (a feature film has ~1,500, word-level captions of a
# 10-hour stream ~100,000): its text is dropped instead of being parsed for minutes.
MAX_CUES = 100_000
# A window's text is cut to this many bytes of UTF-8 (a 2 s window of speech takes ~40): one
# 50 MB cue must not put 50 MB into every sample.
MAX_WINDOW_TEXT_BYTES = 4096

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
    Treat it as read-only: `words` and `cue_index` are computed once.
    """

    cues: list[Cue]
    source: TranscriptSource
    timed: bool = True
    notes: tuple[str, ...] = ()  # cues that were skipped and why, for the video's warnings

    # Computed once per transcript because `text_for_window` is called for every clip of a
    # possibly hour-long video.
    @functools.cached_property
    def words(self) -> str:
        """The words of an untimed transcript joined by single spaces (one string, not a list
        of words: a 20 MB file of short words would make that list take a gigabyte)."""
        return collapse_whitespace(" ".join(cue.text for cue in self.cues))

    @functools.cached_property
    def cue_index(self) -> tuple[list[float], list[float]]:
        """Each cue's start, and the latest end among it and the cues before it; both never
        decrease, so the cues that may overlap a window are found by bisection."""
        starts, reach, latest = [], [], float("-inf")
        for cue in self.cues:
            latest = max(latest, cue.end)
            starts.append(cue.start)
            reach.append(latest)
        return starts, reach


class WindowText(NamedTuple):
    """A window's text, and whether it was cut to the byte limit."""

    text: str
    cut: bool = False


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, for messages: "a FIFO", "a folder"..."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def _check_readable(info: os.stat_result, name: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise TranscriptError(f"{name} is {file_kind(info.st_mode)}, not a regular file; not "
                              f"read")
    if info.st_size > MAX_TRANSCRIPT_BYTES:
        raise TranscriptError(f"{name} is {info.st_size / 1e6:.1f} MB, over the "
                              f"{MAX_TRANSCRIPT_BYTES / 1e6:g} MB a transcript may take; not "
                              f"read")


def _read_regular_file(path: Path, name: str) -> bytes:
    """The bytes of `path`, only if it is a regular file of at most MAX_TRANSCRIPT_BYTES.

    Checked before opening it (opening a FIFO blocks until a writer comes, opening a device
    may act on it), and again on the descriptor, opened non-blocking, in case the name was
    swapped in between; the read stops past the limit in case the file grew.
    """
    try:
        _check_readable(os.stat(path), name)
        handle = open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb")
        with handle:
            _check_readable(os.fstat(handle.fileno()), name)
            data = handle.read(MAX_TRANSCRIPT_BYTES + 1)
    except OSError as err:
        raise TranscriptError(f"cannot read transcript {name}: {err.strerror or err}") from err
    if len(data) > MAX_TRANSCRIPT_BYTES:
        raise TranscriptError(f"{name} is over the {MAX_TRANSCRIPT_BYTES / 1e6:g} MB a "
                              f"transcript may take; not read")
    return data


def read_text_file(path: Path, name: str | None = None) -> str:
    """Read a text file whose encoding nobody recorded, with newlines normalised to "\\n".

    Subtitle files come from everywhere: a byte-order mark decides when present (UTF-8,
    UTF-16 LE/BE, UTF-32 LE/BE); otherwise strict UTF-8 is tried, and text that is not valid
    UTF-8 is read as Windows-1252, the usual legacy single-byte encoding (bytes it leaves
    undefined become U+FFFD). Raises TranscriptError naming the file (`name`, default the
    path) when it is not a regular file, is over MAX_TRANSCRIPT_BYTES, cannot be read, its BOM
    contradicts its bytes, or it holds NUL characters (binary, or UTF-16 without BOM).
    """
    name = str(path) if name is None else name
    data = _read_regular_file(path, name)
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom):].decode(encoding)
            except UnicodeDecodeError as err:
                raise TranscriptError(
                    f"{name}: starts with a {encoding} byte-order mark but is not valid "
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
            f"{name}: contains NUL characters, so it is binary or UTF-16 without a byte-order "
            f"mark; re-save it as UTF-8"
        )
    return text.replace("\r\n", "\n").replace("\r", "\n")


# A character reference with its terminating ";" (&amp; &#233; &#x2014;). html.unescape alone
# also expands HTML's legacy names without ";", turning plain subtitle text such as
# "Salt &notes" into "Salt ¬es" and "&copy holders" into "© holders".
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
# ASS/SSA escapes that survive conversion to SubRip: \N and \n line breaks, \h hard space.
_ASS_ESCAPES = re.compile(r"\\[Nnh]")


# Every character `str.split()` splits at, but " ": `collapse_whitespace` maps them to " ".
_WHITESPACE = str.maketrans(dict.fromkeys(
    "\t\n\v\f\r\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000", " "))


def collapse_whitespace(text: str) -> str:
    """`" ".join(text.split())` without building a list of every word, whose memory would be
    ~50 times the text's: each pass halves every run of spaces."""
    text = text.translate(_WHITESPACE)
    while "  " in text:
        text = text.replace("  ", " ")
    return text.strip(" ")


def clean_text(text: str) -> str:
    """Cue text without markup or entities, whitespace collapsed to single spaces."""
    text = _ASS_ESCAPES.sub(" ", _MARKUP.sub("", text))
    return collapse_whitespace(_ENTITY.sub(lambda m: html.unescape(m.group(0)), text))


def _check_cue_count(count: int, name: str) -> None:
    """Refuse a transcript of more than MAX_CUES cues before parsing it (`count` is cheap to
    take from the text: its timing arrows or event lines)."""
    if count > MAX_CUES:
        raise TranscriptError(f"{name}: {count} cues, over the {MAX_CUES} a transcript may "
                              f"have; its text is dropped")


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
    is malformed and raises TranscriptError with the strict parser's reason, as does text of
    more than MAX_CUES cues.
    """
    _check_cue_count(text.count("-->"), name)
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
    that yield no cue at all raise TranscriptError with the strict parser's reason, as does
    text of more than MAX_CUES cues.
    """
    _check_cue_count(text.count("-->"), name)
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


def load_sidecar(path: Path, name: str | None = None) -> Transcript:
    """Load a .srt, .vtt or .txt transcript (extension matched case-insensitively).

    SRT and VTT cue text loses its markup (<i>, {\\an8}, <c.color>, ...) and extra whitespace;
    cues left empty are dropped. A .txt file is an untimed transcript, whitespace collapsed.
    Raises TranscriptError naming the file (`name`, default the path) and the parser's reason
    when it is malformed, or why it was not read (see `read_text_file`, `MAX_CUES`).
    """
    name = str(path) if name is None else name
    kind = path.suffix.lower()
    if kind not in (".srt", ".vtt", ".txt"):
        raise TranscriptError(f"{name}: unsupported transcript type {path.suffix!r}; "
                              f"use .srt, .vtt or .txt")
    text = read_text_file(path, name)
    if kind == ".srt":
        return parse_srt(text, name)
    if kind == ".vtt":
        return parse_vtt(text, name)
    words = collapse_whitespace(text)
    return Transcript([Cue(0.0, 0.0, words)] if words else [], "txt", timed=False)


@functools.cache
def _is_text_codec(name: str) -> bool:
    """Whether ffmpeg describes the subtitle codec as text (subrip, ass, mov_text, webvtt, ...)
    rather than bitmaps (dvd_subtitle, hdmv_pgs_subtitle), which would need OCR."""
    try:
        return bool(av.codec.Codec(name, "r").text_sub)
    except av.codec.codec.UnknownCodecError:
        return False


def extract_embedded(video_path: Path, ffmpeg_binary: str | None = None,
                     name: str | None = None) -> Transcript | None:
    """The first text subtitle stream of a container as a Transcript, or None if it has none.

    Bitmap subtitle streams are skipped (None if there is no text one). The stream is converted
    to SubRip by the ffmpeg CLI (`ffmpeg_binary`, default `ffmpeg_bin.ffmpeg_binary()`), which
    reads every text format ffmpeg knows and renders styling as tags that we then strip; it
    stops writing past MAX_TRANSCRIPT_BYTES, so a huge stream costs no more memory than a
    sidecar may. Raises DecodeError if the container cannot be opened and TranscriptError
    (naming the video as `name`, default its path) if the conversion fails, times out, or
    yields more than MAX_TRANSCRIPT_BYTES or MAX_CUES.
    """
    name = str(video_path) if name is None else name
    try:
        with av.open(str(video_path)) as container:
            found = next(((s.index, s.codec_context.name) for s in container.streams.subtitles
                          if _is_text_codec(s.codec_context.name)), None)
    except av.error.FFmpegError as err:
        raise DecodeError(f"cannot open {name} to look for subtitles: {err}") from err
    if found is None:
        return None
    index, codec = found
    # ASS/SSA is read as ASS: converted to SubRip, vector drawings ({\p1}m 0 0 l 100 0 ...)
    # would come out as words of every cue they overlap.
    ass = codec in ("ass", "ssa")
    command = [ffmpeg_binary or ffmpeg_bin.ffmpeg_binary(), "-nostdin", "-v", "error",
               "-i", os.fspath(video_path), "-map", f"0:{index}", "-fs",
               str(MAX_TRANSCRIPT_BYTES + 1), "-f", "ass" if ass else "srt", "-"]
    try:
        result = subprocess.run(command, capture_output=True, timeout=EMBEDDED_TIMEOUT_S,
                                check=False)
    except subprocess.TimeoutExpired as err:
        raise TranscriptError(f"{name}: extracting subtitle stream {index} took over "
                              f"{EMBEDDED_TIMEOUT_S:.0f} s") from err
    if result.returncode != 0:
        reason = ffmpeg_bin.stderr_summary(result.stderr.decode("utf-8", errors="replace"))
        raise TranscriptError(f"{name}: ffmpeg could not extract subtitle stream {index}: "
                              f"{reason or f'exit status {result.returncode}'}")
    stream = f"{name} (subtitle stream {index})"
    if len(result.stdout) > MAX_TRANSCRIPT_BYTES:
        raise TranscriptError(f"{stream}: over {MAX_TRANSCRIPT_BYTES / 1e6:g} MB of subtitles, "
                              f"more than a transcript may take; not read")
    text = result.stdout.decode("utf-8", errors="replace").replace("\r\n", "\n")
    if ass:
        return parse_ass(text, stream)
    return parse_srt(text, stream, source="embedded")


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
    """The Dialogue events of an ASS/SSA script as cues (drawings dropped, markup stripped);
    TranscriptError for more than MAX_CUES of them."""
    _check_cue_count(text.count("Dialogue:"), name)
    fields: list[str] | None = None
    cues: list[Cue] = []
    for line in io.StringIO(text):
        key, _, value = line.rstrip("\n").partition(":")
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
    is as likely as a transcript. Only regular files count (symlinks followed): a folder, a
    FIFO or a device named like a sidecar is not one."""
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


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def find_transcript(video_path: Path, ffmpeg_binary: str | None = None, *,
                    root: Path | None = None, follow_symlinks: bool = False) -> Transcript:
    """The transcript of a video: its sidecar file if any, else its embedded text subtitles,
    else an empty timed transcript with source "none".

    `root` is the input folder (default: the video's folder): messages name files relative to
    it, and a sidecar that a symlink leads out of it is refused (TranscriptError) unless
    `follow_symlinks`. Errors of `load_sidecar` and `extract_embedded` propagate: a broken
    transcript is reported, not silently skipped.
    """
    root = video_path.parent if root is None else root
    sidecar = sidecar_path(video_path)
    if sidecar is not None:
        name = _relative_name(sidecar, root)
        if not follow_symlinks and leaves_folder(sidecar, root):
            raise TranscriptError(refusal(name))
        return load_sidecar(sidecar, name)
    embedded = extract_embedded(video_path, ffmpeg_binary, _relative_name(video_path, root))
    return embedded if embedded is not None else Transcript([], "none", timed=True)


def _bounded_join(pieces: Iterable[str], max_bytes: int) -> WindowText:
    """The pieces joined by single spaces, cut to `max_bytes` of UTF-8 at a character
    boundary. Takes no more of the pieces than the cut keeps (a character is at least a
    byte), so a window under one huge cue costs a few kilobytes, not the cue."""
    kept: list[str] = []
    length = -1  # of the kept pieces joined: no space before the first
    for piece in pieces:
        kept.append(piece[:max_bytes - length])
        length += 1 + len(kept[-1])
        if length > max_bytes:
            break
    text = " ".join(kept)
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return WindowText(text)
    return WindowText(data[:max_bytes].decode("utf-8", errors="ignore").rstrip(" "), cut=True)


def text_for_window(transcript: Transcript, start: float, end: float, video_duration: float,
                    max_bytes: int = MAX_WINDOW_TEXT_BYTES) -> WindowText:
    """The transcript text of the window [start, end) seconds, words separated by one space,
    cut to `max_bytes` of UTF-8 (`WindowText.cut` says whether it was).

    Timed: the cues that overlap the window, `cue.start < end and cue.end > start`, in time
    order; a cue 2.0-3.0 s is in [1, 3) and [2, 4) but not in [0, 2) or [3, 5).

    Untimed (.txt): nothing says when a word is spoken, so the words are spread evenly by
    character over the video: word i, which starts at character c_i of the words joined by
    single spaces (length L), is placed at `video_duration * c_i / L` seconds, and a window
    gets the words placed in [start, end). Windows that tile the video thus share the text
    out in order, each word exactly once. `video_duration` is only used for untimed ones.
    """
    if transcript.timed:
        starts, reach = transcript.cue_index
        first = bisect.bisect_right(reach, start)  # cues before it all end by `start`
        last = bisect.bisect_left(starts, end)  # cues from it on all start at `end` or later
        cues = transcript.cues
        return _bounded_join((cues[i].text for i in range(first, last)
                              if cues[i].end > start), max_bytes)
    words = transcript.words
    if not words:
        return WindowText("")
    if video_duration <= 0:
        raise ValueError(f"video_duration must be > 0 to place an untimed transcript, "
                         f"got {video_duration}")
    total = len(words)

    def place(offset: int) -> float:
        return video_duration * offset / total

    def first_word_from(time: float) -> int:
        """Where the first word placed at `time` or later starts (`total` if none)."""
        offset = bisect.bisect_left(range(total + 1), time, key=place)
        if 0 < offset < total and words[offset - 1] != " ":
            space = words.find(" ", offset)
            offset = total if space < 0 else space + 1
        return offset

    first, last = first_word_from(start), first_word_from(end)
    if first >= last:
        return WindowText("")
    stop = last - 1 if last < total else total  # without the space before the next word
    return _bounded_join([words[first:min(stop, first + max_bytes + 1)]], max_bytes)
