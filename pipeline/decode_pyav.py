"""PyAV decode backend: one demux pass over video and audio, frames picked by timestamp.

Only frames that land on the fps grid are converted to RGB, and straight to the scaled size
(libswscale does the YUV->RGB conversion and the resize in one step), so a 4K source costs
one small conversion per grid frame instead of a full-resolution RGB copy per source frame.
H.264 frames that no grid time shows and no other frame is predicted from are not even
decoded (`_FrameSkipper`). The rules this module follows are in `pipeline.decode`; probing
lives here because both backends share it (the ffmpeg CLI build ships no ffprobe).
"""

from __future__ import annotations

import itertools
import math
import os
import struct
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from av.audio.stream import AudioStream
from av.container import InputContainer
from av.video.reformatter import VideoReformatter
from av.video.stream import VideoStream

from pipeline.config import PrepareConfig
from pipeline.decode import (
    TIME_EPS,
    DecodeStats,
    VideoInfo,
    Window,
    WindowAssembler,
    grid_frames_within,
    square_pixel_width,
)
from pipeline.errors import DecodeError
from pipeline.frames import SWS_INTERPOLATION, display_image, scaled_size

_ATTACHED_PIC = int(av.stream.Disposition.attached_pic)
# First box of an MP4/MOV file: `ftyp`, or in old QuickTime files `wide` or the data itself.
_MP4_FIRST_BOXES = (b"ftyp", b"wide", b"mdat")
_NO_TIMESTAMPS = av.format.Flags.no_timestamps.value
# Video packets read ahead of the decoder, so that `_FrameSkipper` sees the frames that follow
# a packet on screen (B-frames come after them in the file). 16 is H.264's largest reorder
# depth; the packets wait compressed (~0.5 s of video at 30 fps, and the audio around it).
LOOKAHEAD_PACKETS = 16
# Formats whose timestamps may restart or leap (MPEG-TS/PS: recordings joined with `cat`,
# broadcast captures): libavformat's AVFMT_TS_DISCONT flag.
_TS_DISCONT = av.format.Flags.ts_discont.value
# In such a format, a stream whose time steps back by more than this, or leaps forward by more
# than `MAX_TIME_LEAP_S` (the ffmpeg CLI's own -dts_delta_threshold), has a discontinuity.
MAX_TIME_STEP_BACK_S = 1.0
MAX_TIME_LEAP_S = 10.0
# Packets of all streams held at most, so that a video stream of few frames (a slideshow)
# cannot keep the audio of a long stretch waiting in memory; decisions then look less far.
MAX_QUEUED_PACKETS = 256


def ffmpeg_message(err: av.FFmpegError) -> str:
    """FFmpeg's own words for an error ("Invalid data found when processing input"), without
    what `str(err)` adds: the error number, the path or the C function ("[Errno 1094995529]
    ...: 'avcodec_send_packet()'"). Reasons stay short and read the same on every machine."""
    return err.strerror or type(err).__name__


def open_container(path: Path) -> InputContainer:
    """Open a media file for reading, turning every failure into a `DecodeError` that says why."""
    if not path.is_file():
        raise DecodeError("no such file")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        return av.open(str(path), metadata_errors="replace")
    except av.FFmpegError as err:
        raise DecodeError(f"not a readable media file ({_open_problem(path, err)})") from err


def _open_problem(path: Path, err: av.FFmpegError) -> str:
    """Why libavformat could not open `path`, as precisely as the file tells."""
    if _mp4_without_index(path):
        return "no moov index: the file was cut before its writer finished"
    if isinstance(err, av.error.EOFError):
        return "it ends inside its header: cut short?"
    return ffmpeg_message(err)


def _mp4_without_index(path: Path) -> bool:
    """Whether `path` is an MP4/MOV (first box `ftyp`, or QuickTime's `wide`/`mdat`) whose
    top-level boxes hold no `moov`, the index of every sample.

    MP4 writers (cameras, screen recorders, PyAV, ffmpeg without ``+faststart``) append the
    index when they finish, so this is a recording or download that stopped early; FFmpeg
    only says "Invalid data found when processing input". Reads one box header per box.
    """
    try:
        with path.open("rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            offset = 0
            while offset + 8 <= end:
                handle.seek(offset)
                header = handle.read(16)
                size, kind = struct.unpack(">I4s", header[:8])
                if kind == b"moov" or (offset == 0 and kind not in _MP4_FIRST_BOXES):
                    return False
                if size == 1 and len(header) == 16:
                    size = struct.unpack(">Q", header[8:])[0]  # 64-bit box size
                elif size == 0:
                    size = end - offset  # the box runs to the end of the file
                if size < 8:
                    return False  # not a box structure after all: nothing to conclude
                offset += size
            return offset > 0
    except OSError:
        return False


def select_streams(container: InputContainer) -> tuple[VideoStream, AudioStream | None]:
    """The first real video stream (cover art is skipped) and the first audio stream."""
    videos = [s for s in container.streams.video if not int(s.disposition) & _ATTACHED_PIC]
    if not videos:
        raise DecodeError("no video stream")
    audios = container.streams.audio
    return videos[0], (audios[0] if audios else None)


def origin(container: InputContainer) -> float:
    """Time zero of the file in seconds: the container start time, as ffmpeg reports it (0 for
    a file without timestamps of its own, see `has_timestamps`)."""
    start = container.start_time
    if start is None or not has_timestamps(container):
        return 0.0
    return start / av.time_base


def has_timestamps(container: InputContainer) -> bool:
    """Whether the file's timestamps time its frames.

    Raw elementary streams (MPEG-1/2 video or H.264 without a container) store none: their
    demuxer guesses them, not even regularly (MPEG-1: 0, 0.08, 0.12 s, ... at 25 fps). The
    ffmpeg CLI drops such guesses and times the frames from 0 by their durations; the PyAV
    backend does the same (`_GridPicker`), or the two backends would show different frames.
    """
    return not container.format.flags & _NO_TIMESTAMPS


def frame_orientation(frame: av.VideoFrame, stream: VideoStream) -> tuple[int, bool]:
    """(clockwise rotation, mirror) for display, from the frame's display matrix.

    The matrix is read whole, not just its angle (`frame.rotation`): a phone's front camera or
    ``ffmpeg -display_hflip`` also mirrors the picture, and the angle of a mirroring matrix is
    not the rotation to apply. Files without a matrix on their frames (older FFmpeg builds)
    may carry the legacy `rotate` tag (clockwise degrees, never a mirror) instead.
    """
    matrix = _display_matrix(frame)
    if matrix is not None:
        return matrix_orientation(matrix)
    try:
        return (round(float(stream.metadata.get("rotate", 0)) / 90) * 90) % 360, False
    except ValueError:
        return 0, False


def _display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    """The frame's 3x3 display matrix (nine int32, row by row), if it has one."""
    for data in frame.side_data:
        if data.type.name == "DISPLAYMATRIX":
            return struct.unpack("=9i", bytes(data))
    return None


def matrix_orientation(matrix: tuple[int, ...]) -> tuple[int, bool]:
    """(clockwise rotation in 0/90/180/270, mirror) that an FFmpeg display matrix asks for:
    turn the picture clockwise by the rotation, then mirror it left-right if `mirror`.

    This is what ffmpeg's autorotate and players show. The matrix's top-left 2x2 block
    (a b / c d) maps a coded point (x, y) to (a x + c y, b x + d y); a negative determinant
    means it mirrors. Negating the first column (what ``-display_hflip`` does to a matrix) takes
    the mirror out, and what remains is a rotation by atan2(b, a) clockwise.
    """
    a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]
    mirror = a * d - b * c < 0
    if mirror:
        a = -a
    rotation = round(math.degrees(math.atan2(b, a)) / 90) * 90 % 360
    return rotation, mirror


def sample_aspect_ratio(stream: VideoStream) -> float:
    """The stream's pixel aspect ratio as ffmpeg guesses it: the container's if it states one,
    else the codec's, else square pixels."""
    for ratio in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if ratio is not None and ratio > 0:
            return float(ratio)
    return 1.0


def probe_pyav(path: Path) -> VideoInfo:
    """`pipeline.decode.probe` for both backends: header fields plus the first frame's
    orientation."""
    with open_container(path) as container:
        video, audio = select_streams(container)
        (rotation, flip), pixel_format = (0, False), video.codec_context.pix_fmt
        for _, frame in decoded_frames(container, [video], DecodeStats()):
            (rotation, flip), pixel_format = frame_orientation(frame, video), frame.format.name
            break
        width, height = video.codec_context.width, video.codec_context.height
        if rotation in (90, 270):
            width, height = height, width
        if container.duration:
            duration: float | None = container.duration / av.time_base
        elif video.duration and video.time_base:
            duration = float(video.duration * video.time_base)
        else:
            duration = None
        return VideoInfo(
            path=path,
            duration_hint=duration,
            width=width,
            height=height,
            rotation=rotation,
            flip=flip,
            fps_hint=float(video.average_rate) if video.average_rate else None,
            has_audio=audio is not None,
            audio_channels=audio.layout.nb_channels if audio is not None else None,
            audio_rate=audio.rate if audio is not None else None,
            start_time=origin(container),
            pixel_format=pixel_format,
            video_stream_index=video.index,
            audio_stream_index=audio.index if audio is not None else None,
            sample_aspect_ratio=sample_aspect_ratio(video),
        )


def video_end_pyav(path: Path) -> float | None:
    """End of the last video packet (its time plus duration) from the origin, by demuxing the
    video stream without decoding it; None when no packet has a timestamp.

    Container durations are not the video's: they cover the longest stream (audio that runs on
    after the picture), Matroska states the end timestamp rather than the span when the file
    does not start at 0, and streamed Matroska/WebM states none. An untimed transcript must be
    spread over the footage the windows actually cover, so it uses this instead.
    """
    with open_container(path) as container:
        video, _ = select_streams(container)
        start = origin(container)
        end = None
        try:
            for packet in container.demux(video):
                if packet.pts is None or packet.time_base is None:
                    continue
                stop = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                end = stop if end is None else max(end, stop)
        except av.FFmpegError:
            pass  # a cut-short file: the packets read so far are what decoding will see
        return None if end is None else end - start


def _note_error(stats: DecodeStats, problem: str) -> None:
    if stats.first_error is None:
        stats.first_error = problem


class _FrameSkipper:
    """Lets the H.264 decoder drop the frames that no grid time shows, when nothing needs them.

    A frame at time t is on screen at grid time g_k when it is the last frame with time <=
    g_k + TIME_EPS (see `pipeline.decode`). If another frame has a time in (t, g + TIME_EPS],
    g the first grid time that t is on screen at, that frame replaces it before the grid gets
    there, and no grid time shows it. Converting only grid frames does not save its decoding:
    later frames may be predicted from it. But a non-reference frame (nal_ref_idc 0: most
    B-frames, 40% of the frames of x264's "veryfast" output) is used by nothing, and FFmpeg's
    `skip_frame = NONREF` drops it unread while every other frame decodes bit for bit as
    before. So each video packet is decoded with NONREF when such a later frame is known, from
    the packet times read so far and `LOOKAHEAD_PACKETS` ahead; else with DEFAULT. On 720p30
    footage for the 8 fps grid this leaves 518 of 720 frames to decode, 21% less decode time.

    Frames are kept, whatever the grid, when they might be the first frame (earlier grid
    times show it; so one with an earlier time must have gone to the decoder), and in the last
    `LOOKAHEAD_PACKETS` packets (the last frame interval decides the duration of files that
    state no frame durations). Only H.264: in HEVC a "sub-layer non-reference" picture may
    still be referenced from a higher temporal layer, so NONREF does not mean unused there.
    """

    def __init__(self, stream: VideoStream, fps: int, start: float) -> None:
        self.stream = stream
        self.fps = fps
        self.start = start
        self.final = False  # set once the demuxer is exhausted: decode everything left
        self._ahead: deque[float | None] = deque()  # times of the video packets read ahead
        self._sent: deque[float] = deque(maxlen=LOOKAHEAD_PACKETS)  # latest sent to decoder

    @staticmethod
    def applies(stream: VideoStream) -> bool:
        return stream.codec_context.name == "h264"

    @property
    def full(self) -> bool:
        """Whether enough video packets are read ahead to decode the oldest one."""
        return len(self._ahead) > LOOKAHEAD_PACKETS

    def read(self, packet: av.Packet) -> None:
        """Note a packet as it leaves the demuxer."""
        if packet.stream is self.stream:
            self._ahead.append(self._time(packet))

    def decode(self, packet: av.Packet) -> None:
        """Set the decoder's `skip_frame` for `packet`, the next one it gets."""
        if packet.stream is not self.stream:
            return
        time = self._ahead.popleft()
        hidden = not self.final and time is not None and self._hidden(time)
        self.stream.codec_context.skip_frame = "NONREF" if hidden else "DEFAULT"
        if time is not None:
            self._sent.append(time)

    def _time(self, packet: av.Packet) -> float | None:
        if packet.pts is None or packet.time_base is None:
            return None
        return float(packet.pts * packet.time_base) - self.start

    def _hidden(self, time: float) -> bool:
        """Whether no grid time can show a frame at `time` (see the class docstring)."""
        if not any(sent < time for sent in self._sent):
            return False
        # The first grid index whose time shows it, by `_GridPicker.push`'s own comparison.
        index = max(0, math.ceil((time - TIME_EPS) * self.fps))
        while index / self.fps + TIME_EPS < time:
            index += 1
        while index > 0 and (index - 1) / self.fps + TIME_EPS >= time:
            index -= 1
        limit = index / self.fps + TIME_EPS
        return any(other is not None and time < other <= limit
                   for other in itertools.chain(self._sent, self._ahead))


def decoded_frames(
    container: InputContainer,
    streams: list[av.stream.Stream],
    stats: DecodeStats,
    skipper: _FrameSkipper | None = None,
) -> Iterator[tuple[av.stream.Stream, av.frame.Frame]]:
    """Decoded frames of `streams` in file order, skipping packets the decoder rejects.

    A demuxer error (a truncated or mangled container) ends the stream early: the decoders are
    flushed so that frames already read still come out. With a `skipper`, packets wait in a
    queue until it has read far enough ahead to decide on them.
    """
    demuxer = container.demux(*streams)
    queue: deque[av.Packet] = deque()
    broken = False
    while True:
        try:
            packet = next(demuxer)
        except StopIteration:
            break
        except av.FFmpegError as err:
            _note_error(stats, f"reading the file stopped early: {ffmpeg_message(err)}")
            broken = True
            break
        queue.append(packet)
        if skipper is not None:
            skipper.read(packet)
        while queue and (skipper is None or skipper.full or len(queue) > MAX_QUEUED_PACKETS):
            yield from _decode(queue.popleft(), stats, skipper)
    if skipper is not None:
        skipper.final = True
    while queue:
        yield from _decode(queue.popleft(), stats, skipper)
    if broken:
        for stream in streams:
            try:
                for frame in stream.decode(None):
                    yield stream, frame
            except av.FFmpegError:
                pass


def _decode(
    packet: av.Packet, stats: DecodeStats, skipper: _FrameSkipper | None
) -> Iterator[tuple[av.stream.Stream, av.frame.Frame]]:
    if skipper is not None:
        skipper.decode(packet)
    try:
        decoded = packet.decode()
    except av.FFmpegError as err:
        stats.packets_skipped += 1
        _note_error(stats, f"the {packet.stream.type} decoder rejected a packet: "
                           f"{ffmpeg_message(err)}")
        return
    for frame in decoded:
        yield packet.stream, frame


def scale_to_rgb(frame: av.VideoFrame, size: tuple[int, int],
                 reformatter: VideoReformatter) -> np.ndarray:
    """`frame` as (height, width, 3) uint8 RGB at `size` (width, height), by libswscale's
    `SWS_INTERPOLATION` filter in one step from whatever pixel format it has.

    The one conversion every picture the model sees goes through: a video frame on the grid
    here, a still image given to `omni generate` in `pipeline.media_in`. Pass one reformatter
    per stream of pictures of one size (it keeps the swscale context); one thread, because the
    decoder's threads and the other workers already use the cores.
    """
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
        if self._frame is None:
            return None
        return self._time + self._frame_duration(self._frame)

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
    there, so every window before it is kept and correct, and the jump is reported.
    """

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
    `omni generate` in `pipeline.media_in`, so both are downmixed and resampled alike.
    """

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


def iter_windows_pyav(
    path: Path, config: PrepareConfig, stats: DecodeStats, threads: int = 0
) -> Iterator[Window]:
    """`pipeline.decode.iter_windows` with PyAV: one pass, bounded memory, timestamp-picked."""
    container = open_container(path)
    try:
        yield from _windows(container, config, stats, threads)
    finally:
        container.close()


def _windows(
    container: InputContainer, config: PrepareConfig, stats: DecodeStats, threads: int
) -> Iterator[Window]:
    video, audio = select_streams(container)
    video.thread_type = "AUTO"
    video.codec_context.thread_count = threads
    start, timed = origin(container), has_timestamps(container)
    assembler = WindowAssembler(config, audio is not None, stats)
    picker = _GridPicker(config, video, start, timed)
    resampler = MonoResampler(config.sample_rate, start) if audio is not None else None
    streams = [video] if audio is None else [video, audio]
    # The skipper reads frame times off packets: guessed ones would mislead it.
    skipper = (_FrameSkipper(video, config.fps, start)
               if timed and _FrameSkipper.applies(video) else None)
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
