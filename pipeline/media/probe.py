"""Probing with PyAV, for both decode backends (the ffmpeg CLI build ships no ffprobe): open a
file (and say why one cannot be opened), choose its streams, read its origin, orientation and
pixel aspect ratio, and `probe_pyav` / `video_end_pyav` on top of them. The PyAV decode loop
that uses the same helpers is `pipeline.media.decode_pyav`."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import av
from av.audio.stream import AudioStream
from av.container import InputContainer
from av.video.stream import VideoStream

from pipeline.errors import DecodeError
from pipeline.media.frames import MAX_FRAME_BYTES, frame_size_problem
from pipeline.media.packets import decoded_frames, ffmpeg_message
from pipeline.media.windows import DecodeStats, VideoInfo

_ATTACHED_PIC = int(av.stream.Disposition.attached_pic)
# First box of an MP4/MOV file: `ftyp`, or in old QuickTime files `wide` or the data itself.
_MP4_FIRST_BOXES = (b"ftyp", b"wide", b"mdat")
_NO_TIMESTAMPS = av.format.Flags.no_timestamps.value
# libavcodec's own guard, for every decoder that opens a file: a frame of more pixels than this
# is over MAX_FRAME_BYTES in any pixel format of 8 bits or more, and is refused before its
# memory is allocated. It matters where no check of ours can come first: libavformat decodes a
# first frame while it opens a file whose container does not state the pixel format (MJPEG or
# PNG in Matroska or MOV), and a stream may change its size after its first frame.
DECODER_GUARD = {"max_pixels": str(MAX_FRAME_BYTES)}


def open_container(path: Path) -> InputContainer:
    """Open a media file for reading, turning every failure into a `DecodeError` that says why."""
    if not path.is_file():
        raise DecodeError("no such file")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        return av.open(str(path), metadata_errors="replace", options=DECODER_GUARD)
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
    only says "Invalid data found when processing input". Reads one box header per box."""
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
    """The first real video stream (cover art is skipped) and the first audio stream.

    The video stream's frames are checked against MAX_FRAME_BYTES (`check_frame_size`), and
    its decoder gets `DECODER_GUARD`, before any of them is decoded."""
    videos = [s for s in container.streams.video if not int(s.disposition) & _ATTACHED_PIC]
    if not videos:
        raise DecodeError("no video stream")
    video = videos[0]
    check_frame_size(video)
    video.codec_context.options = {**video.codec_context.options, **DECODER_GUARD}
    audios = container.streams.audio
    return video, (audios[0] if audios else None)


def check_frame_size(stream: VideoStream) -> None:
    """Raise `DecodeError` when `stream`'s frames, at the size and pixel format its container
    states, would take more than MAX_FRAME_BYTES each (an unknown pixel format counts 8 bits
    a pixel, the least any takes), or when it states no size: libavformat then could not
    decode its first frame, for damage or because `DECODER_GUARD` refused it."""
    context = stream.codec_context
    width, height, pixel_format = context.width, context.height, context.pix_fmt
    if width <= 0 or height <= 0:
        raise DecodeError(f"the video stream states no picture size: its first frame did not "
                          f"decode (damaged, or more than {MAX_FRAME_BYTES} pixels)")
    bits = av.VideoFormat(pixel_format).padded_bits_per_pixel if pixel_format else 8
    what = f"{pixel_format} frame" if pixel_format else "frame of unknown pixel format"
    problem = frame_size_problem(width, height, bits, what)
    if problem is not None:
        raise DecodeError(problem)


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
    backend does the same (`decode_pyav._GridPicker`), or the two backends would show
    different frames."""
    return not container.format.flags & _NO_TIMESTAMPS


def frame_orientation(frame: av.VideoFrame, stream: VideoStream) -> tuple[int, bool]:
    """(clockwise rotation, mirror) for display, from the frame's display matrix.

    The matrix is read whole, not just its angle (`frame.rotation`): a phone's front camera or
    ``ffmpeg -display_hflip`` also mirrors the picture, and the angle of a mirroring matrix is
    not the rotation to apply. Files without a matrix on their frames (older FFmpeg builds)
    may carry the legacy `rotate` tag (clockwise degrees, never a mirror) instead."""
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
    the mirror out, and what remains is a rotation by atan2(b, a) clockwise."""
    a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]
    mirror = a * d - b * c < 0
    return round(math.degrees(math.atan2(b, -a if mirror else a)) / 90) * 90 % 360, mirror


def sample_aspect_ratio(stream: VideoStream) -> float:
    """The stream's pixel aspect ratio as ffmpeg guesses it: the container's if it states one,
    else the codec's, else square pixels."""
    for ratio in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if ratio is not None and ratio > 0:
            return float(ratio)
    return 1.0


def probe_pyav(path: Path) -> VideoInfo:
    """`pipeline.media.decode.probe` for both backends: header fields plus the first frame's
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
            path=path, duration_hint=duration, width=width, height=height, rotation=rotation,
            flip=flip, fps_hint=float(video.average_rate) if video.average_rate else None,
            has_audio=audio is not None,
            audio_channels=audio.layout.nb_channels if audio is not None else None,
            audio_rate=audio.rate if audio is not None else None, start_time=origin(container),
            pixel_format=pixel_format, video_stream_index=video.index,
            audio_stream_index=audio.index if audio is not None else None,
            sample_aspect_ratio=sample_aspect_ratio(video))


def video_end_pyav(path: Path) -> float | None:
    """End of the last video packet (its time plus duration) from the origin, by demuxing the
    video stream without decoding it; None when no packet has a timestamp.

    Container durations are not the video's: they cover the longest stream (audio that runs on
    after the picture), Matroska states the end timestamp rather than the span when the file
    does not start at 0, and streamed Matroska/WebM states none. An untimed transcript must be
    spread over the footage the windows actually cover, so it uses this instead."""
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
