"""Transcripts of a video: sidecar files (.srt, .vtt, .txt) or an embedded text subtitle stream.

A video's transcript becomes each clip's `txt` member: the text of the cues that overlap the
clip window (`text_for_window`). Sidecars win over embedded subtitles because a user who put a
file next to the video meant it; a broken sidecar raises rather than being silently replaced.

Transcripts come from anywhere, so reading one is bounded: only a regular file is opened (a
FIFO would block forever), at most `MAX_TRANSCRIPT_BYTES` of it (or of an embedded stream) and
`MAX_CUES` cues are read, and a window's text is cut to `MAX_WINDOW_TEXT_BYTES`. Past a limit
the text is dropped or cut with a message, never the video. Messages name files relative to
the input folder, as video ids are."""

from __future__ import annotations

import bisect
import codecs
import functools
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from pipeline.errors import TranscriptError

TranscriptSource = Literal["srt", "vtt", "txt", "embedded", "none"]

# A transcript (sidecar file, or subtitle stream as SubRip) larger than this is not read: dense
# subtitles take ~30 bytes a second, so 20 MB is over 150 hours; a 1 GB sparse file would
# otherwise take a worker's memory with it.
MAX_TRANSCRIPT_BYTES = 20_000_000
# A window's text is cut to this many bytes of UTF-8 (a 2 s window of speech takes ~40): one
# 50 MB cue must not put 50 MB into every sample.
MAX_WINDOW_TEXT_BYTES = 4096

# Byte-order marks, longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
         (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16-be"))


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
    Treat it as read-only: `words` and `cue_index` are computed once."""

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
        raise TranscriptError(f"{name} is {file_kind(info.st_mode)}, not a regular file; not read")
    if info.st_size > MAX_TRANSCRIPT_BYTES:
        raise TranscriptError(f"{name} is {info.st_size / 1e6:.1f} MB, over the "
                              f"{MAX_TRANSCRIPT_BYTES / 1e6:g} MB a transcript may take; not "
                              f"read")


def _read_regular_file(path: Path, name: str) -> bytes:
    """The bytes of `path`, only if it is a regular file of at most MAX_TRANSCRIPT_BYTES.

    Checked before opening it (opening a FIFO blocks until a writer comes, opening a device
    may act on it), and again on the descriptor, opened non-blocking, in case the name was
    swapped in between; the read stops past the limit in case the file grew."""
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
    contradicts its bytes, or it holds NUL characters (binary, or UTF-16 without BOM)."""
    name = str(path) if name is None else name
    data = _read_regular_file(path, name)
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom):].decode(encoding)
            except UnicodeDecodeError as err:
                raise TranscriptError(f"{name}: starts with a {encoding} byte-order mark but is "
                                      f"not valid {encoding} ({err.reason} at byte "
                                      f"{err.start + len(bom)}); re-save it as UTF-8") from err
            break
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("cp1252", errors="replace")
    if "\x00" in text:
        raise TranscriptError(f"{name}: contains NUL characters, so it is binary or UTF-16 "
                              f"without a byte-order mark; re-save it as UTF-8")
    return text.replace("\r\n", "\n").replace("\r", "\n")


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
    out in order, each word exactly once. `video_duration` is only used for untimed ones."""
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
