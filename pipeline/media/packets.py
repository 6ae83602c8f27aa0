"""The PyAV packet loop both the probe and the decode backend run: demux, decode, survive bad
packets and cut-short files, and let the H.264 decoder drop the frames no grid time shows
(`FrameSkipper`)."""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterator

import av
from av.container import InputContainer
from av.video.stream import VideoStream

from pipeline.media.windows import TIME_EPS, DecodeStats

# Video packets read ahead of the decoder, so that `FrameSkipper` sees the frames that follow
# a packet on screen (B-frames come after them in the file). 16 is H.264's largest reorder
# depth; the packets wait compressed (~0.5 s of video at 30 fps, and the audio around it).
LOOKAHEAD_PACKETS = 16
# Packets of all streams held at most, so that a video stream of few frames (a slideshow)
# cannot keep the audio of a long stretch waiting in memory; decisions then look less far.
MAX_QUEUED_PACKETS = 256


def ffmpeg_message(err: av.FFmpegError) -> str:
    """FFmpeg's own words for an error ("Invalid data found when processing input"), without
    what `str(err)` adds: the error number, the path or the C function ("[Errno 1094995529]
    ...: 'avcodec_send_packet()'"). Reasons stay short and read the same on every machine."""
    return err.strerror or type(err).__name__


def _note_error(stats: DecodeStats, problem: str) -> None:
    if stats.first_error is None:
        stats.first_error = problem


class FrameSkipper:
    """Lets the H.264 decoder drop the frames that no grid time shows, when nothing needs them.

    A frame at time t is on screen at grid time g_k when it is the last frame with time <=
    g_k + TIME_EPS (see `pipeline.media.windows`). If another frame has a time in (t, g + TIME_EPS],
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
    still be referenced from a higher temporal layer, so NONREF does not mean unused there."""

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
        # The first grid index whose time shows it, by the comparison of
        # `decode_pyav._GridPicker.push`.
        index = max(0, math.ceil((time - TIME_EPS) * self.fps))
        while index / self.fps + TIME_EPS < time:
            index += 1
        while index > 0 and (index - 1) / self.fps + TIME_EPS >= time:
            index -= 1
        limit = index / self.fps + TIME_EPS
        return any(other is not None and time < other <= limit
                   for other in itertools.chain(self._sent, self._ahead))


def decoded_frames(container: InputContainer, streams: list[av.stream.Stream], stats: DecodeStats,
                   skipper: FrameSkipper | None = None
                   ) -> Iterator[tuple[av.stream.Stream, av.frame.Frame]]:
    """Decoded frames of `streams` in file order, skipping packets the decoder rejects.

    A demuxer error (a truncated or mangled container) ends the stream early: the decoders are
    flushed so that frames already read still come out. Frames the decoder flags corrupt
    (damage it concealed: H.264 patches bad macroblocks over and raises nothing) are counted in
    `stats.decode_errors`. The flag is read, not FFmpeg's log: PyAV's log callback takes the
    GIL from the decoder's own threads, and closing a frame-threaded decoder early (a window
    taken from the middle of a video) deadlocked on it. With a `skipper`, packets wait in a
    queue until it has read far enough ahead to decide on them."""
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
    packet: av.Packet, stats: DecodeStats, skipper: FrameSkipper | None
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
        if frame.is_corrupt:  # damage the decoder concealed (H.264 patches macroblocks over)
            stats.decode_errors += 1
            if stats.first_decode_error is None:
                at = "" if frame.time is None else f" at {frame.time:.2f} s"
                stats.first_decode_error = (f"decode error: the {packet.stream.type} decoder "
                                            f"concealed damaged data in the frame{at}")
        yield packet.stream, frame
