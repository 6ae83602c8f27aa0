"""Clip windows of a video, whichever backend decodes it: the types both decode backends
(`decode_pyav`, `decode_ffmpeg`) and the readers of their output share, and the
`WindowAssembler` that turns grid frames and audio into windows.

Timing rules, shared by both backends:

- **Origin.** Time 0 is the container's start time (what ffprobe prints as ``start:``), so
  video and audio keep their relative offset and subtitle cue times line up. A file that stores
  no timestamps (a raw MPEG-1/2 elementary stream, whose demuxer only guesses them, irregularly)
  has its frames timed from 0 by their durations, as the ffmpeg CLI does: its first frame is at
  0, each next one where the previous one ends.
- **Frame grid.** Every clip samples one global grid ``t_k = k / fps``. Clip ``j`` starts at
  ``s_j = j * clip_stride`` and holds grid frames ``j*stride_frames ...`` (``video_frames`` of
  them). The frame for ``t_k`` is the last decoded frame whose presentation time is
  ``<= t_k + 1e-6`` (what is on screen at ``t_k``; correct for variable frame rate); grid times
  before the first frame use the first frame. The clip's image is grid frame
  ``j*stride_frames + video_frames // 2`` (the middle of the clip).
- **Duration.** ``D`` is the end of the last decoded video frame (its time plus its duration).
  Clip ``j`` exists iff ``s_j + clip_duration <= D + END_TOLERANCE``: ``floor((D -
  clip_duration) / clip_stride) + 1`` clips when ``D >= clip_duration``, otherwise none. The
  1 ms tolerance is there because Matroska/WebM store times in whole milliseconds: a 4 s video
  at 24 fps ends at 3.958 + 0.041 = 3.999 s there and would otherwise lose its last clip.
- **Audio.** Mono (any layout is downmixed), float32, at ``sample_rate``; clip ``j`` gets samples
  ``[s_j * sample_rate, s_j * sample_rate + samples_per_clip)``. The first audio sample sits at
  its own timestamp (silence before it); later gaps or overlaps over 0.1 s are filled with
  silence or dropped, as ffmpeg's ``aresample=first_pts=0`` does. Missing audio is zeros.

`WindowAssembler` turns grid frames and audio into windows as soon as each is complete and
keeps only what windows still open need, so memory is bounded by about one clip, not by the
length of the video."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import PrepareConfig
from pipeline.media.frames import clip_frame

# Frames whose time is within this of a grid time count as on screen at it.
TIME_EPS = 1e-6
# A clip may end this much after the last frame does (millisecond container timestamps).
END_TOLERANCE = 1e-3
# Audio jumps smaller than this are ignored; larger ones are filled or cut (swresample default).
AUDIO_HARD_COMPENSATION_S = 0.1


@dataclass
class VideoInfo:
    """What `probe` learns from a file's header and its first video frame."""

    path: Path
    duration_hint: float | None  # container or stream duration, if the file states one
    width: int  # as displayed, i.e. after rotation
    height: int
    rotation: int  # clockwise degrees applied for display (0, 90, 180 or 270)
    fps_hint: float | None  # the stream's average frame rate, if known
    has_audio: bool
    audio_channels: int | None
    audio_rate: int | None
    start_time: float = 0.0  # the origin of all timestamps (container start), seconds
    pixel_format: str | None = None  # of the first decoded frame, e.g. "yuv420p"
    video_stream_index: int = 0  # index among all streams of the file
    audio_stream_index: int | None = None
    sample_aspect_ratio: float = 1.0  # width of a stored pixel over its height (DVD: 32/27)
    flip: bool = False  # mirrored left-right for display, after the rotation

    @property
    def coded_size(self) -> tuple[int, int]:
        """(width, height) of the stored pictures, before the display rotation."""
        if self.rotation in (90, 270):
            return self.height, self.width
        return self.width, self.height

    @property
    def square_pixel_size(self) -> tuple[int, int]:
        """`coded_size` with the width stretched by the sample aspect ratio: the unrotated
        picture as players show it (720x480 at 32:27 -> 853x480)."""
        width, height = self.coded_size
        return square_pixel_width(width, self.sample_aspect_ratio), height


def square_pixel_width(width: int, sample_aspect_ratio: float) -> int:
    return max(1, round(width * sample_aspect_ratio))


@dataclass
class Window:
    """One clip window of a video: the unit that becomes one shard sample."""

    index: int
    start: float  # seconds from the video's origin
    end: float
    frames: np.ndarray  # (T, frame_size, frame_size, 3) uint8
    image: np.ndarray  # (image_size, image_size, 3) uint8, the middle grid frame
    audio: np.ndarray  # (samples_per_clip,) float32 in [-1, 1]


@dataclass
class DecodeStats:
    """Counters a caller may pass to `iter_windows` to learn how decoding went.

    The peaks show that memory stays bounded: at most about one clip's frames and one clip's
    audio (plus whatever the file's interleaving forces) are held at any time."""

    video_frames: int = 0  # decoded source frames (PyAV only; ffmpeg does not report them)
    grid_frames: int = 0  # frames delivered on the fps grid
    windows: int = 0
    packets_skipped: int = 0  # undecodable packets skipped (PyAV only)
    # Errors the decoders reported, each FFmpeg error-level log line (PyAV) or stderr line
    # (ffmpeg CLI): damaged H.264 macroblocks are concealed, not raised, and this is their
    # only trace. Rejected packets log one too. The first logged one (PyAV), for the warning.
    decode_errors: int = 0
    first_decode_error: str | None = None
    first_error: str | None = None  # the first decoder complaint, for the failure report
    # D once the video has ended; ffmpeg only reveals it to the grid: floor(D * fps) / fps.
    duration: float | None = None
    peak_buffered_frames: int = 0
    peak_buffered_samples: int = 0


def grid_frames_within(duration: float, config: PrepareConfig) -> int:
    """Grid frames that lie inside a video whose last frame ends at `duration` seconds.

    Frame k counts when a clip could end right after it: (k + 1) / fps <= D + END_TOLERANCE.
    D is a float sum of rational timestamps (Matroska at 24 fps: 1.958 + 0.041 =
    1.9989999999999999, exactly 1 ms short of 2 s), so the product is rounded to 1e-6 of a
    frame before the floor; otherwise the tolerance is lost to the last bit."""
    return max(0, math.floor(round((duration + END_TOLERANCE) * config.fps, 6)))


def window_count(duration: float, config: PrepareConfig) -> int:
    return grid_window_count(grid_frames_within(duration, config), config)


def grid_window_count(grid_frames: int, config: PrepareConfig) -> int:
    """Number of windows whose frames all lie among the first `grid_frames` grid frames."""
    if grid_frames < config.video_frames:
        return 0
    return (grid_frames - config.video_frames) // config.stride_frames + 1


class AudioBuffer:
    """Mono samples from absolute index `base` on; everything before `base` is forgotten.

    Places decoded chunks on the timeline by the rules in the module docstring; the windows
    of a video and an audio file given to `omni generate` (`pipeline.generate.inputs`) both use it.
    `end` is where the signal received so far ends, so that the next chunk is placed against
    it; samples forgotten ahead of it (a gap between windows) are dropped as they arrive."""

    def __init__(self, tolerance: int) -> None:
        self.tolerance = tolerance  # samples of timestamp jitter to ignore
        self.base = 0
        self._wanted_from = 0  # samples before this index are no longer needed
        self._data = np.zeros(0, dtype=np.float32)  # (N,)
        self._pending: list[np.ndarray] = []  # appended chunks, joined lazily
        self._pending_len = 0
        self.started = False
        self.ended = False

    def __len__(self) -> int:
        return len(self._data) + self._pending_len

    @property
    def end(self) -> int:
        return self.base + len(self)

    def add(self, samples: np.ndarray, position: int | None) -> None:
        """Append samples; `position` (absolute index of the first one) places them if known.

        The first chunk always goes to its position; later ones only when they jump by more
        than the tolerance, so timestamp jitter does not tear the signal."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)  # (n,)
        if position is not None and self.started and abs(position - self.end) <= self.tolerance:
            position = None
        if position is not None and position > self.end:
            self._append(np.zeros(position - self.end, dtype=np.float32))
        elif position is not None and position < self.end:
            samples = samples[self.end - position :]
        self.started = True
        self._append(samples)
        if self.base < self._wanted_from:
            self._trim()

    def _append(self, samples: np.ndarray) -> None:
        if len(samples):
            self._pending.append(samples)
            self._pending_len += len(samples)

    def _joined(self) -> np.ndarray:
        if self._pending:
            self._data = np.concatenate([self._data, *self._pending])  # (N,)
            self._pending, self._pending_len = [], 0
        return self._data

    def take(self, start: int, length: int) -> np.ndarray:
        """Samples [start, start + length), zero where the signal has not reached."""
        data = self._joined()
        out = np.zeros(length, dtype=np.float32)  # (L,)
        lo, hi = max(start, self.base), min(start + length, self.end)
        if hi > lo:
            out[lo - start : hi - start] = data[lo - self.base : hi - self.base]
        return out

    def forget_before(self, index: int) -> None:
        """Drop the samples before `index`, including those still to arrive."""
        self._wanted_from = max(self._wanted_from, index)
        self._trim()

    def _trim(self) -> None:
        # Never past `end`: moving it would misplace the next chunk (a chunk within the
        # jitter tolerance of a forgotten index would be appended at it, not trimmed).
        index = min(self._wanted_from, self.end)
        if index > self.base:
            self._data = self._joined()[index - self.base :].copy()
            self.base = index


class WindowAssembler:
    """Collects grid frames and audio; hands out each window as soon as it is complete.

    Backends call `add_frame` for grid frames 0, 1, 2, ... in order (each a display image,
    (image_size, image_size, 3) uint8), `add_audio` for mono samples, `end_audio` when the audio
    stream is over, and `finish` with the number of grid frames that lie inside the video.
    Window ``j`` is released once grid frame ``j*stride_frames + video_frames`` has arrived
    (which proves the video lasts to the window's end) and its audio is available."""

    def __init__(self, config: PrepareConfig, has_audio: bool, stats: DecodeStats) -> None:
        self.config = config
        self.stats = stats
        self._frames: deque[np.ndarray] = deque()  # clip-size frames from grid index _base on
        self._images: dict[int, np.ndarray] = {}  # full-size images of clip middles, by index
        self._base = 0  # grid index of _frames[0]
        self._received = 0  # grid frames received so far
        self._next = 0  # next window index
        tolerance = round(AUDIO_HARD_COMPENSATION_S * config.sample_rate)
        self._audio = AudioBuffer(tolerance) if has_audio else None

    def add_frame(self, image: np.ndarray) -> None:
        cfg = self.config
        index = self._received
        offset = index - cfg.video_frames // 2
        if offset >= 0 and offset % cfg.stride_frames == 0:
            self._images[index] = image
        if index < self._span(self._next)[0]:
            # Before the next window (a stride longer than a clip leaves gaps): no window
            # uses it, and keeping it would grow memory with the gap. `_forget` has emptied
            # the queue up to here, so it just moves on.
            self._base += 1
        else:
            self._frames.append(clip_frame(image, cfg.video_size))  # (F, F, 3)
        self._received += 1
        self.stats.grid_frames = self._received
        self.stats.peak_buffered_frames = max(self.stats.peak_buffered_frames, len(self._frames))

    def add_audio(self, samples: np.ndarray, position: int | None = None) -> None:
        """Append mono samples; `position` is their first sample's index from the origin."""
        if self._audio is None:
            return
        self._audio.add(samples, position)
        self.stats.peak_buffered_samples = max(self.stats.peak_buffered_samples, len(self._audio))

    def end_audio(self) -> None:
        """The audio stream is over: later windows are padded with silence."""
        if self._audio is not None:
            self._audio.ended = True

    def _span(self, j: int) -> tuple[int, int]:
        """(first grid index, first audio sample) of window j."""
        first = j * self.config.stride_frames
        return first, round(first * self.config.sample_rate / self.config.fps)

    def audio_wanted(self, grid_frames: int | None = None) -> bool:
        """True when the next window only waits for audio: a pull-based backend reads more.

        Pass `grid_frames` (as for `finish`) once the video has ended."""
        audio = self._audio
        if audio is None or audio.ended:
            return False
        first, sample = self._span(self._next)
        if grid_frames is None:
            video_done = self._received > first + self.config.video_frames
        else:
            video_done = self._next < grid_window_count(min(grid_frames, self._received),
                                                        self.config)
        return video_done and audio.end < sample + self.config.samples_per_clip

    def ready(self) -> Iterator[Window]:
        while True:
            first, sample = self._span(self._next)
            if self._received <= first + self.config.video_frames:
                return
            audio = self._audio
            if (audio is not None and not audio.ended
                    and audio.end < sample + self.config.samples_per_clip):
                return
            yield self._emit()

    def finish(self, grid_frames: int) -> Iterator[Window]:
        """The video is over and the first `grid_frames` grid frames lie inside it.

        Releases every remaining window that fits; the audio counts as ended."""
        self.end_audio()
        total = grid_window_count(min(grid_frames, self._received), self.config)
        while self._next < total:
            yield self._emit()

    def _emit(self) -> Window:
        cfg = self.config
        j = self._next
        first, sample = self._span(j)
        offset = first - self._base
        frames = np.stack([self._frames[offset + i]
                           for i in range(cfg.video_frames)])  # (T, F, F, 3)
        image = self._images.pop(first + cfg.video_frames // 2)
        if self._audio is not None:
            audio = self._audio.take(sample, cfg.samples_per_clip)  # (samples_per_clip,)
        else:
            audio = np.zeros(cfg.samples_per_clip, dtype=np.float32)
        np.clip(audio, -1.0, 1.0, out=audio)
        start = first / cfg.fps
        window = Window(j, start, start + cfg.clip_duration, frames, image, audio)
        self._next += 1
        self.stats.windows = self._next
        self._forget()
        return window

    def _forget(self) -> None:
        first, sample = self._span(self._next)
        while self._base < first and self._frames:
            self._frames.popleft()
            self._base += 1
        if self._audio is not None:
            self._audio.forget_before(sample)
