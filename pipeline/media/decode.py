"""Decode one video into a stream of clip windows: the backend-neutral interface, which
dispatches to the backend `config.decoder` names (`pipeline.media.decode_pyav`,
`pipeline.media.decode_ffmpeg`). Both probe with PyAV (`media.probe`); the timing rules they
follow and the types they return are in `pipeline.media.windows`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from pipeline.config import PrepareConfig
from pipeline.media.windows import DecodeStats, VideoInfo, Window


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a file's streams, duration, rotation and start time without decoding it all.

    Both backends probe with PyAV (libavformat), so they agree on stream choice and rotation,
    whatever the prepare config. Raises `DecodeError` when the file cannot be opened or has no
    video stream. Messages never repeat the path: the caller records it."""
    from pipeline.media.probe import probe_pyav

    return probe_pyav(Path(path))


def video_end(path: str | os.PathLike[str]) -> float | None:
    """Seconds from the origin to the end of the last video packet (demux only, no decoding);
    None when the file states no video timestamps. See `probe.video_end_pyav`."""
    from pipeline.media.probe import video_end_pyav

    return video_end_pyav(Path(path))


def iter_windows(path: str | os.PathLike[str], config: PrepareConfig,
                 stats: DecodeStats | None = None, threads: int = 0) -> Iterator[Window]:
    """Stream the clip windows of one video, in order, with the backend `config.decoder` names.

    Pass a `DecodeStats` to learn skipped packets, the duration and the memory peaks.
    `threads` is the video decoder's thread count (0: the decoder's choice, one more than the
    CPUs); the windows do not depend on it. Raises `DecodeError` for files that cannot be
    decoded (no video stream, unreadable, no frames)."""
    stats = stats if stats is not None else DecodeStats()
    if config.decoder == "ffmpeg":
        from pipeline.media.decode_ffmpeg import iter_windows_ffmpeg

        return iter_windows_ffmpeg(Path(path), config, stats, threads)
    from pipeline.media.decode_pyav import iter_windows_pyav

    return iter_windows_pyav(Path(path), config, stats, threads)


def window_from(path: str | os.PathLike[str], config: PrepareConfig, start: float,
                stats: DecodeStats | None = None) -> Window | None:
    """The clip window that begins at `start` seconds (a time on the frame grid), or None when
    the video ends before it. `iter_windows` runs with `clip_stride` = `start`, where it is
    window 1: the grid, the frames and the audio do not depend on the stride, so it is bit for
    bit the window a decode of the whole video makes at that time; decoding stops right after
    it, with memory bounded by about one clip (the window keeps index 1)."""
    windowed, wanted = (replace(config, clip_stride=start), 1) if start else (config, 0)
    with contextlib.closing(iter_windows(path, windowed, stats)) as windows:
        return next((window for window in windows if window.index == wanted), None)
