"""PyAV decode backend: one demux pass over video and audio, frames picked by timestamp.

Only frames that land on the fps grid are converted to RGB, and straight to the scaled size
(libswscale does the YUV->RGB conversion and the resize in one step), so a 4K source costs
one small conversion per grid frame instead of a full-resolution RGB copy per source frame.
H.264 frames that no grid time shows and no other frame is predicted from are not even
decoded (`pipeline.media.packets.FrameSkipper`). The rules this module follows are in
`pipeline.media.windows`; probing is `pipeline.media.probe`, shared with the ffmpeg backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from av.video.stream import VideoStream

from pipeline.config import PrepareConfig
from pipeline.errors import DecodeError
from pipeline.media.frames import SWS_INTERPOLATION, display_image, scaled_size
from pipeline.media.packets import FrameSkipper, decoded_frames
from pipeline.media.probe import (
    frame_orientation,
    has_timestamps,
    open_container,
    origin,
    sample_aspect_ratio,
    select_streams,
)
from pipeline.media.windows import (
    TIME_EPS,
    DecodeStats,
    Window,
    WindowAssembler,
    grid_frames_within,
    square_pixel_width,
)

# Formats whose timestamps may restart or leap (MPEG-TS/PS: recordings joined with `cat`,
# broadcast captures): libavformat's AVFMT_TS_DISCONT flag.
_TS_DISCONT = av.format.Flags.ts_discont.value
# In such a format, a stream whose time steps back by more than this, or leaps forward by more
# than `MAX_TIME_LEAP_S` (the ffmpeg CLI's own -dts_delta_threshold), has a discontinuity.
MAX_TIME_STEP_BACK_S = 1.0
MAX_TIME_LEAP_S = 10.0


def scale_to_rgb(frame: av.VideoFrame, size: tuple[int, int],
                 reformatter: VideoReformatter) -> np.ndarray:
    """`frame` as (height, width, 3) uint8 RGB at `size` (width, height), by libswscale's
    `SWS_INTERPOLATION` filter in one step from whatever pixel format it has.

    The one conversion every picture the model sees goes through: a video frame on the grid
    here, a still image given to `omni generate` in `pipeline.generate.inputs`. Pass one reformatter
    per stream of pictures of one size (it keeps the swscale context); one thread, because the
    decoder's threads and the other workers already use the cores."""
    width, height = size
    return reformatter.reformat(
        frame, width, height, format="rgb24", interpolation=SWS_INTERPOLATION.upper(),
        threads=1,
    ).to_ndarray()  # (height, width, 3)


class _GridPicker:
    """Turns decoded video frames (presentation order) into display images on the fps grid."""

    def __init__(self, config: PrepareConfig, stream: VideoStream, start: float,
                 timed: bool) -> None:
        self.config = config
        self.stream = stream
        self.start = start
        self.timed = timed  # False: the file has no timestamps (see `has_timestamps`)
        self.next_index = 0  # next grid frame to deliver
        self._frame: av.VideoFrame | None = None  # the frame on screen now
        self._time = 0.0
        self._step = 0.0  # time from the previous frame to the current one
        self._image: np.ndarray | None = None  # `_frame` converted, once needed
        self._size: tuple[int, int] = (0, 0)
        self._rotation = 0
        self._flip = False
        # One swscale context for the whole video: `VideoFrame.reformat` builds a new one per
        # call (5.9 ms per 720p frame against 2.1 ms reused, same pixels).
        self._reformatter = VideoReformatter()

    def push(self, frame: av.VideoFrame) -> Iterator[np.ndarray]:
        """Grid images whose time has passed now that `frame` is on screen."""
        time = self._frame_time(frame)
        if time is None:
            return
        if self._frame is None:
            width = square_pixel_width(frame.width, sample_aspect_ratio(self.stream))
            self._size = scaled_size(width, frame.height, self.config.image_size)
            self._rotation, self._flip = frame_orientation(frame, self.stream)
        else:
            while self.next_index / self.config.fps + TIME_EPS < time:
                yield self._current_image()
                self.next_index += 1
            self._step = time - self._time
        self._frame, self._time, self._image = frame, time, None

    def _frame_time(self, frame: av.VideoFrame) -> float | None:
        """Seconds from the origin at which `frame` goes on screen; None if it has no time."""
        if not self.timed:
            # The ffmpeg CLI's rule for such files: the first frame at 0, every next one where
            # the previous one ends.
            return 0.0 if self._frame is None else self._time + self._frame_duration(self._frame)
        if frame.pts is None or frame.time_base is None:
            return None
        return float(frame.pts * frame.time_base) - self.start

    def end(self) -> float | None:
        """Duration D (end of the last frame), or None when no frame had a timestamp."""
        return None if self._frame is None else self._time + self._frame_duration(self._frame)

    def flush(self, grid_frames: int) -> Iterator[np.ndarray]:
        """The remaining grid images up to `grid_frames`: the last frame stays on screen."""
        while self._frame is not None and self.next_index < grid_frames:
            yield self._current_image()
            self.next_index += 1

    def _frame_duration(self, frame: av.VideoFrame) -> float:
        # Same preference order as the ffmpeg CLI's estimate of the last frame's duration, so
        # both backends agree on D: the container's duration unless it is a guessed single
        # tick, else the last frame interval, else the stream's average frame rate.
        ticks = frame.duration or 0
        tick = float(frame.time_base)
        if ticks > 0 and not (ticks == 1 and self._step > 2 * tick):
            return ticks * tick
        if self._step > 0:
            return self._step
        rate = self.stream.average_rate
        return 1.0 / float(rate) if rate else 0.0

    def _current_image(self) -> np.ndarray:
        if self._image is None:
            assert self._frame is not None
            rgb = scale_to_rgb(self._frame, self._size, self._reformatter)  # (h, w, 3) coded
            self._image = display_image(rgb, self._rotation, self.config.image_size,
                                        flip=self._flip)
        return self._image


class _Continuity:
    """Finds the first timestamp discontinuity of each stream, in formats that allow them.

    After a jump back, the grid would never be reached again (the rest of the file silently
    dropped); after a leap forward, the last picture would be repeated, with silence, over the
    gap. Both happen in MPEG-TS files joined with `cat`. Rebasing the times would need audio
    and video rebased alike; instead decoding ends at the video's jump, as if the file ended
    there, so every window before it is kept and correct, and the jump is reported."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.jump: str | None = None  # the latest jump found, read when `follows` says no
        self._last: dict[int, float] = {}  # stream index -> time of its last frame
        self._broken: set[int] = set()  # streams past their jump

    def follows(self, stream: av.stream.Stream, frame: av.frame.Frame) -> bool:
        """Whether `frame` continues its stream (False from its first jump on)."""
        if stream.index in self._broken:
            return False
        if frame.pts is None or frame.time_base is None:
            return True
        time = float(frame.pts * frame.time_base) - self.start
        last = self._last.get(stream.index)
        if last is not None and not -MAX_TIME_STEP_BACK_S <= time - last <= MAX_TIME_LEAP_S:
            self._broken.add(stream.index)
            self.jump = (f"timestamps jump from {last:.2f} s to {time:.2f} s (recordings "
                         f"joined end to end?): the rest of the file was not used")
            return False
        self._last[stream.index] = time
        return True


class MonoResampler:
    """Any audio frame -> mono float32 at the target rate, with its position from the origin.

    Every sound the model hears goes through it: a video's audio here, an audio file given to
    `omni generate` in `pipeline.generate.inputs`, so both are downmixed and resampled alike."""

    def __init__(self, sample_rate: int, start: float) -> None:
        self.sample_rate = sample_rate
        self.start = start
        self._resampler = self._new()

    def _new(self) -> av.AudioResampler:
        return av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate)

    def resample(self, frame: av.AudioFrame | None) -> Iterator[tuple[np.ndarray, int | None]]:
        """(samples, index of the first one from the origin, if timed); None flushes."""
        try:
            outs = self._resampler.resample(frame)
        except ValueError:
            # The input layout or rate changed mid-stream (TV recordings do this): drain the
            # old resampler and start a fresh one for the new format.
            outs = self._resampler.resample(None)
            self._resampler = self._new()
            outs += self._resampler.resample(frame)
        for out in outs:
            samples = out.to_ndarray().reshape(-1)  # (n,) packed mono
            position = None
            if out.pts is not None and out.time_base is not None:
                seconds = float(out.pts * out.time_base) - self.start
                position = round(seconds * self.sample_rate)
            yield samples, position


def iter_windows_pyav(path: Path, config: PrepareConfig, stats: DecodeStats,
                      threads: int = 0) -> Iterator[Window]:
    """`decode.iter_windows` with PyAV: one pass, bounded memory, timestamp-picked."""
    with open_container(path) as container:
        video, audio = select_streams(container)
        video.thread_type = "AUTO"
        video.codec_context.thread_count = threads
        start, timed = origin(container), has_timestamps(container)
        assembler = WindowAssembler(config, audio is not None, stats)
        picker = _GridPicker(config, video, start, timed)
        resampler = MonoResampler(config.sample_rate, start) if audio is not None else None
        streams = [video] if audio is None else [video, audio]
        # The skipper reads frame times off packets: guessed ones would mislead it.
        skipper = (FrameSkipper(video, config.fps, start)
                   if timed and FrameSkipper.applies(video) else None)
        watch = _Continuity(start) if container.format.flags & _TS_DISCONT else None
        for stream, frame in decoded_frames(container, streams, stats, skipper):
            if watch is not None and not watch.follows(stream, frame):
                if stream is video:
                    stats.first_error = stats.first_error or watch.jump
                    break
                continue  # the audio after its jump is dropped; the video decides where to stop
            if stream is video:
                stats.video_frames += 1
                for image in picker.push(frame):
                    assembler.add_frame(image)
                    yield from assembler.ready()
            elif resampler is not None:
                for samples, position in resampler.resample(frame):
                    assembler.add_audio(samples, position)
                yield from assembler.ready()
        if resampler is not None:
            for samples, position in resampler.resample(None):
                assembler.add_audio(samples, position)
        assembler.end_audio()
        duration = picker.end()
        if duration is None:
            reason = f": {stats.first_error}" if stats.first_error else ""
            raise DecodeError(f"no decodable video frames{reason}")
        stats.duration = duration
        grid_frames = grid_frames_within(duration, config)
        for image in picker.flush(grid_frames):
            assembler.add_frame(image)
            yield from assembler.ready()
        yield from assembler.finish(grid_frames)
