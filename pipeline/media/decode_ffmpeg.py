"""FFmpeg CLI decode backend: two ffmpeg processes stream raw frames and samples into pipes.

Same rules as `pipeline.media.windows` describes, obtained from ffmpeg's filters:

- ``-copyts`` plus ``setpts=PTS-(start)/TB`` puts time 0 at the container start for every file
  type (without it ffmpeg re-bases MPEG-TS inputs on the streams it uses, so video and audio
  processes would disagree).
- ``fps=fps:start_time=0:round=up`` emits, for grid time k/fps, the last frame whose timestamp
  rounds up to <= k, i.e. whose time is <= k/fps: exactly the PyAV backend's rule, including
  repeating the first frame before it appears.
- A second ``fps`` branch, shifted by `END_TOLERANCE` and with ``round=down``, writes one tiny
  frame per grid slot to a file; its count is floor((D + END_TOLERANCE) * fps), the number of
  grid frames inside the video, which decides the last window exactly as the PyAV backend does
  (the ``round=up`` branch alone only tells ceil(D * fps)). It starts one slot early (at
  -1/fps, filled with the first frame) and the extra slot is not counted: a video shorter than
  one grid step (a single frame, an image) has no slot inside it, and current ffmpeg builds
  fail a run whose output receives no frame ("Nothing was written into output file") instead
  of writing an empty file.
- ``-max_pixels``: libavcodec's guard against oversized frames, as the PyAV backend sets it
  (`pipeline.media.probe.DECODER_GUARD`); the probe has checked the stated size already.
- ``-noautorotate`` and a scale to `scaled_size` of the coded size, in rgb24, so that rotation,
  mirror and crop happen in `pipeline.media.frames`, the same code the PyAV backend uses.
- Chroma siting: PyAV's libswscale assumes MPEG-style ("left") chroma for YUV and centred
  chroma only for the JPEG ``yuvj*`` formats; newer ffmpeg builds default to centred chroma.
  Telling ffmpeg ``in_chroma_loc=left`` for non-JPEG formats makes the two backends' frames
  bit-identical with the bundled builds (otherwise ~3 grey levels apart on textured content).
- ``aresample=first_pts=0`` places the first audio sample at its timestamp and fills or cuts
  jumps over 0.1 s, with the downmix to mono and the resampling in one swresample pass.

Both pipes are read incrementally (one frame, one audio chunk at a time) and audio only as far
as the next window needs, so memory stays bounded. Stderr goes to files, never to a pipe that
could fill up and stall ffmpeg; the processes are killed if the consumer stops early."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import ffmpeg
import numpy as np

from pipeline.config import PrepareConfig
from pipeline.errors import DecodeError
from pipeline.media.ffmpeg_bin import ffmpeg_binary, stderr_error_count, stderr_summary
from pipeline.media.frames import SWS_INTERPOLATION, display_image, scaled_size
from pipeline.media.probe import DECODER_GUARD, probe_pyav
from pipeline.media.windows import END_TOLERANCE, DecodeStats, VideoInfo, Window, WindowAssembler

AUDIO_CHUNK_SECONDS = 0.5
_COUNT_BYTES = 1  # one 1x1 gray pixel per grid slot in the counting branch
_COUNT_EARLY_SLOTS = 1  # slots the counting branch writes before time 0 (never empty)
_GLOBAL_ARGS = ["-nostdin", "-hide_banner", "-loglevel", "error", "-copyts"]


def _file_url(path: Path) -> str:
    # The `file:` protocol keeps names like "a:b.mp4" or "-x.mp4" from being misread.
    return f"file:{path.resolve()}"


def _shift(info: VideoInfo) -> str:
    return f"PTS-({info.start_time!r})/TB"


def video_command(info: VideoInfo, config: PrepareConfig, count_path: Path,
                  threads: int = 0) -> list[str]:
    """ffmpeg arguments: grid frames as rgb24 on stdout, one byte per grid slot to `count_path`.

    `threads` is the decoder's thread count (0: ffmpeg's choice)."""
    width, height = scaled_size(*info.square_pixel_size, config.image_size)
    siting = {} if (info.pixel_format or "").startswith("yuvj") else {"in_chroma_loc": "left"}
    decoder = {"threads": threads} if threads > 0 else {}
    source = ffmpeg.input(_file_url(info.path), noautorotate=None, **DECODER_GUARD, **decoder)
    branches = source[str(info.video_stream_index)].filter("setpts", _shift(info)).split()
    grid = (branches[0]
            .filter("fps", fps=config.fps, start_time=0, round="up")
            .filter("scale", width, height, flags=SWS_INTERPOLATION, **siting)
            .filter("format", "rgb24"))
    count = (
        branches[1]
        .filter("setpts", f"PTS+{END_TOLERANCE!r}/TB")
        .filter("fps", fps=config.fps, start_time=-_COUNT_EARLY_SLOTS / config.fps, round="down")
        .filter("scale", 1, 1)
        .filter("format", "gray"))
    outputs = ffmpeg.merge_outputs(
        grid.output("pipe:1", format="rawvideo", pix_fmt="rgb24"),
        count.output(_file_url(count_path), format="rawvideo", pix_fmt="gray"))
    return outputs.compile(cmd=[ffmpeg_binary(), *_GLOBAL_ARGS, "-y"])


def audio_command(info: VideoInfo, config: PrepareConfig) -> list[str]:
    """ffmpeg arguments: the audio stream as mono float32 little-endian at the target rate."""
    assert info.audio_stream_index is not None
    audio = (ffmpeg.input(_file_url(info.path), **DECODER_GUARD)[str(info.audio_stream_index)]
             .filter("asetpts", _shift(info))
             .filter("aresample", config.sample_rate, first_pts=0, ochl="mono", osf="flt"))
    output = audio.output("pipe:1", format="f32le", acodec="pcm_f32le", ac=1, ar=config.sample_rate)
    return output.compile(cmd=[ffmpeg_binary(), *_GLOBAL_ARGS])


def _stderr_tail(log: IO[bytes]) -> str:
    log.seek(0, 2)
    size = log.tell()
    log.seek(max(0, size - 4096))
    return stderr_summary(log.read().decode("utf-8", errors="replace"))


class _Process:
    """One ffmpeg child with stdout on a pipe and stderr in a temporary file."""

    def __init__(self, cmd: list[str], workdir: Path, name: str) -> None:
        self.log = open(workdir / f"{name}.log", "w+b")  # closed in close()
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log)
        except OSError as err:
            self.log.close()
            raise DecodeError(f"cannot run ffmpeg ({cmd[0]}): {err.strerror or err}") from err

    def read(self, n: int) -> bytes:
        assert self.proc.stdout is not None
        return self.proc.stdout.read(n)

    def wait(self) -> tuple[int, str]:
        """Exit status and the last lines ffmpeg wrote to stderr."""
        rc = self.proc.wait()
        return rc, _stderr_tail(self.log)

    def error_count(self) -> int:
        """Error lines ffmpeg wrote to stderr (`stderr_error_count`), once it has exited."""
        self.log.seek(0)
        return stderr_error_count(self.log.read().decode("utf-8", errors="replace"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


class _AudioPipe:
    """Pulls mono float32 chunks from the audio process only when a window needs them."""

    def __init__(self, process: _Process, config: PrepareConfig, stats: DecodeStats) -> None:
        self.process = process
        self.chunk_bytes = 4 * round(AUDIO_CHUNK_SECONDS * config.sample_rate)
        self.stats = stats

    def pull(self, assembler: WindowAssembler) -> None:
        data = self.process.read(self.chunk_bytes)
        usable = len(data) - len(data) % 4
        if usable:
            assembler.add_audio(np.frombuffer(data[:usable], dtype="<f4").copy())  # (n,)
        if len(data) < self.chunk_bytes:
            assembler.end_audio()
            rc, tail = self.process.wait()
            self.stats.decode_errors += self.process.error_count()
            if rc != 0 and self.stats.first_error is None:
                self.stats.first_error = f"audio: ffmpeg exited with status {rc}: {tail}"
            elif tail and self.stats.first_error is None:
                self.stats.first_error = f"audio: {tail}"


def iter_windows_ffmpeg(path: Path, config: PrepareConfig, stats: DecodeStats,
                        threads: int = 0) -> Iterator[Window]:
    """`pipeline.media.decode.iter_windows` with the ffmpeg CLI (see the module docstring)."""
    info = probe_pyav(path)
    with tempfile.TemporaryDirectory(prefix="omni-decode-") as tmp:
        workdir = Path(tmp)
        count_path = workdir / "grid.count"
        processes: list[_Process] = []
        try:
            video = _Process(video_command(info, config, count_path, threads), workdir, "video")
            processes.append(video)
            audio = None
            if info.has_audio:
                audio_process = _Process(audio_command(info, config), workdir, "audio")
                processes.append(audio_process)
                audio = _AudioPipe(audio_process, config, stats)
            yield from _windows(info, config, stats, video, audio, count_path)
        finally:
            for process in processes:
                process.close()


def _windows(info: VideoInfo, config: PrepareConfig, stats: DecodeStats, video: _Process,
             audio: _AudioPipe | None, count_path: Path) -> Iterator[Window]:
    width, height = scaled_size(*info.square_pixel_size, config.image_size)
    frame_bytes = width * height * 3
    assembler = WindowAssembler(config, audio is not None, stats)
    while True:
        data = video.read(frame_bytes)
        if len(data) < frame_bytes:
            break
        rgb = np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)  # (h, w, 3)
        assembler.add_frame(display_image(rgb, info.rotation, config.image_size, flip=info.flip))
        while audio is not None and assembler.audio_wanted():
            audio.pull(assembler)
        yield from assembler.ready()
    rc, tail = video.wait()
    stats.decode_errors += video.error_count()
    if rc != 0:
        raise DecodeError(f"ffmpeg exited with status {rc}: {tail or 'no message'}")
    if stats.grid_frames == 0:
        reason = f": {tail}" if tail else ""
        raise DecodeError(f"no decodable video frames{reason}")
    if tail and stats.first_error is None:
        stats.first_error = tail  # ffmpeg recovered from these (e.g. corrupt packets)
    slots = count_path.stat().st_size // _COUNT_BYTES if count_path.exists() else 0
    grid_frames = max(0, slots - _COUNT_EARLY_SLOTS)
    stats.duration = grid_frames / config.fps
    while audio is not None and assembler.audio_wanted(grid_frames):
        audio.pull(assembler)
    yield from assembler.finish(grid_frames)
