"""Subtitle parsing (SubRip, WebVTT, ASS) and where a video's transcript comes from: its sidecar
file or, failing that, its first embedded text subtitle stream (`find_transcript`)."""

from __future__ import annotations

import functools
import html
import io
import os
import re
import subprocess
from pathlib import Path

import av
import pysrt
import webvtt

from pipeline.errors import DecodeError, TranscriptError
from pipeline.media import ffmpeg_bin
from pipeline.media.discover import leaves_folder, refusal
from pipeline.media.transcripts import (
    MAX_TRANSCRIPT_BYTES,
    Cue,
    Transcript,
    TranscriptSource,
    collapse_whitespace,
    read_text_file,
)

# Longest ffmpeg may take to pull a subtitle stream out of a container (demux only, no decode).
EMBEDDED_TIMEOUT_S = 300.0
# HTML-like tags (<i>, <font color=..>, WebVTT <c.red>, <v Speaker>, <00:01.000>) and ASS/SSA
# override blocks ({\an8}, {\i1}). A tag starts with a letter, digit or "/" right after "<", so
# "a < b" and a plain "{" in dialogue are left alone.
_MARKUP = re.compile(r"</?[A-Za-z0-9][^<>\n]*>|\{\\[^}\n]*\}")
# Language-tagged sidecars as yt-dlp and others write them: "<stem>.en.srt", "<stem>.pt-BR.vtt".
_LANG_TAG = re.compile(r"[A-Za-z0-9_-]{1,16}")
_TIMED_SIDECARS = (".srt", ".vtt")
# More cues than this is not a transcript (a feature film has ~1,500, word-level captions of a
# 10-hour stream ~100,000): its text is dropped instead of being parsed for minutes.
MAX_CUES = 100_000

# A character reference with its terminating ";" (&amp; &#233; &#x2014;). html.unescape alone
# also expands HTML's legacy names without ";", turning plain subtitle text such as
# "Salt &notes" into "Salt ¬es" and "&copy holders" into "© holders".
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
# ASS/SSA escapes that survive conversion to SubRip: \N and \n line breaks, \h hard space.
_ASS_ESCAPES = re.compile(r"\\[Nnh]")


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
    return Transcript(sorted(kept, key=lambda c: (c.start, c.end)), source, timed=True, notes=notes)


def parse_srt(text: str, name: str, source: TranscriptSource = "srt") -> Transcript:
    """Parse SubRip text; `name` identifies it in errors.

    Like video players, skips a broken cue and keeps the rest; text that yields no cue at all
    is malformed and raises TranscriptError with the strict parser's reason, as does text of
    more than MAX_CUES cues."""
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
    text of more than MAX_CUES cues."""
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
    when it is malformed, or why it was not read (see `read_text_file`, `MAX_CUES`)."""
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
    yields more than MAX_TRANSCRIPT_BYTES or MAX_CUES."""
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
    return parse_ass(text, stream) if ass else parse_srt(text, stream, source="embedded")


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
    transcript is reported, not silently skipped."""
    root = video_path.parent if root is None else root
    sidecar = sidecar_path(video_path)
    if sidecar is not None:
        name = _relative_name(sidecar, root)
        if not follow_symlinks and leaves_folder(sidecar, root):
            raise TranscriptError(refusal(name))
        return load_sidecar(sidecar, name)
    embedded = extract_embedded(video_path, ffmpeg_binary, _relative_name(video_path, root))
    return embedded if embedded is not None else Transcript([], "none", timed=True)
