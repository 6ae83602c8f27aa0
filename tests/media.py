"""Tiny synthetic media for tests, written with PyAV (and the ffmpeg binary where PyAV can't).

Every picture and sound encodes *when* it is, so a test can check timing from decoded pixels
and samples alone, despite lossy compression:

- ``pattern="counter"``: a red stripe marks the top of the coded picture (orientation); the
  upper half is a uniform grey whose level encodes ``frame_index % 16`` and the lower half one
  that encodes ``(frame_index // 16) % 16`` (levels 16, 30, ..., 226: 14 apart, far more than
  the codec's error on flat areas). `read_counter` recovers the index (mod 256).
- audio ``"tone"``: a sine at ``tone_hz`` during odd seconds, silence during even seconds, on
  every channel. `tone_seconds` says which whole seconds of a signal carry the tone.

Files stay small (a few seconds, 160x120 or less) so the suite needs no fixtures on disk.
"""

from __future__ import annotations

import os
import struct
import subprocess
import tarfile
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from io import BytesIO
from pathlib import Path

import av
import numpy as np
from PIL import Image

from pipeline.media.ffmpeg_bin import ffmpeg_binary

LEVEL_BASE = 16
LEVEL_STEP = 14
TONE_AMPLITUDE = 0.5
_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
# Variable frame rate: frame durations cycle through these milliseconds (mean 42.5 ms).
_VFR_DURATIONS_MS = (20, 70, 30, 50)


@dataclass
class SyntheticVideo:
    """What was written: enough for a test to predict every decoded frame and window."""

    path: Path
    frame_times: list[float] = field(default_factory=list)  # presentation time of each frame
    duration: float = 0.0  # end of the last frame (or of the audio when there is no video)


def _level(value: int) -> int:
    return LEVEL_BASE + LEVEL_STEP * (value % 16)


def counter_picture(index: int, width: int, height: int) -> np.ndarray:
    """The ``counter`` pattern for frame ``index``: (H, W, 3) uint8."""
    picture = np.empty((height, width, 3), dtype=np.uint8)  # (H, W, 3)
    half = height // 2
    picture[:half] = _level(index)
    picture[half:] = _level(index // 16)
    stripe = max(2, height // 8)
    picture[:stripe] = (220, 30, 30)
    return picture


def waves_picture(time: float, width: int, height: int) -> np.ndarray:
    """The ``waves`` pattern at `time` seconds: (H, W, 3) uint8 smooth colour texture."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)  # (H, W) each
    phase = np.array([0.0, 2.1, 4.2], dtype=np.float32)  # one per channel
    waves = np.sin(x[..., None] / 5 + time * 3 + phase) * np.cos(y[..., None] / 7 - phase)
    return (128 + 100 * waves).astype(np.uint8)  # (H, W, 3)


def read_counter(image: np.ndarray) -> int:
    """Recover the frame index (mod 256) from a decoded ``counter`` picture of any size.

    Samples the middle of each half, away from the stripe and the boundary that scaling blurs.
    """
    height, width = image.shape[:2]
    cols = slice(width * 3 // 8, width * 5 // 8)
    upper = float(np.median(image[int(height * 0.28) : int(height * 0.42), cols]))
    lower = float(np.median(image[int(height * 0.62) : int(height * 0.9), cols]))
    low = round((upper - LEVEL_BASE) / LEVEL_STEP) % 16
    high = round((lower - LEVEL_BASE) / LEVEL_STEP) % 16
    return high * 16 + low


def stripe_side(image: np.ndarray) -> str:
    """Which edge of a decoded ``counter`` picture carries the red stripe: top/bottom/left/right."""
    red = image[..., 0].astype(np.float32) - image[..., 1].astype(np.float32)  # (H, W)
    height, width = red.shape
    band_h, band_w = max(1, height // 16), max(1, width // 16)
    edges = {
        "top": red[:band_h].mean(),
        "bottom": red[-band_h:].mean(),
        "left": red[:, :band_w].mean(),
        "right": red[:, -band_w:].mean(),
    }
    return max(edges, key=lambda side: edges[side])


def tone_signal(n_samples: int, sample_rate: int, tone_hz: float, start: float = 0.0) -> np.ndarray:
    """The reference sound from time ``start``: tone in odd seconds, silence in even ones."""
    t = start + np.arange(n_samples) / sample_rate  # (N,)
    on = np.floor(t).astype(np.int64) % 2 == 1
    return (TONE_AMPLITUDE * np.sin(2 * np.pi * tone_hz * t) * on).astype(np.float32)


def _frame_times(duration: float, fps: float, vfr: bool) -> list[float]:
    if not vfr:
        return [i / fps for i in range(round(duration * fps))]
    times, now, i = [], 0, 0
    while now < duration * 1000:
        times.append(now / 1000)
        now += _VFR_DURATIONS_MS[i % len(_VFR_DURATIONS_MS)]
        i += 1
    return times


def _video_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def make_video(
    path: str | os.PathLike[str],
    duration: float = 4.0,
    fps: int = 24,
    size: tuple[int, int] = (160, 120),
    audio: str | None = "tone",
    tone_hz: float = 440.0,
    channels: int = 1,
    sample_rate: int = 44100,
    video: bool = True,
    rotation: int = 0,
    vfr: bool = False,
    pattern: str = "counter",
    codec: str | None = None,
) -> SyntheticVideo:
    """Write a small test video (container chosen by the suffix: .mp4, .mkv, .mov, .m4a).

    ``size`` is (width, height) of the coded picture. ``rotation`` is the clockwise display
    rotation a player applies (the ``rotate`` tag convention: a phone held upright records
    landscape pixels with rotation 90). ``vfr`` gives irregular frame durations.
    ``pattern`` is ``"counter"`` (see module docstring) or ``"waves"`` (smooth colour waves that
    drift with time: texture for comparing scalers, still cheap to compress).

    The returned ``duration`` is nominal (last frame time + its intended duration); containers
    may store the last frame's duration differently (Matroska rounds to milliseconds; MP4 with
    B-frames keeps decode-order durations), so tests that need the exact end should decode.
    ``codec`` overrides the video encoder (default libx264, else mpeg4); ``"mjpeg"`` writes
    full-range ``yuvj420p`` (use an .avi or .mkv suffix).
    """
    path = Path(path)
    if audio not in ("tone", None):
        raise ValueError(f"audio must be 'tone' or None, got {audio!r}")
    if pattern not in ("counter", "waves"):
        raise ValueError(f"pattern must be 'counter' or 'waves', got {pattern!r}")
    if channels not in _LAYOUTS:
        raise ValueError(f"channels must be one of {sorted(_LAYOUTS)}, got {channels}")
    width, height = size
    times = _frame_times(duration, fps, vfr) if video else []
    with av.open(str(path), mode="w") as container:
        vstream = astream = None
        if video:
            vstream = container.add_stream(codec or _video_codec(), rate=fps)
            pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
            vstream.width, vstream.height, vstream.pix_fmt = width, height, pix_fmt
            vstream.codec_context.time_base = Fraction(1, 1000) if vfr else Fraction(1, fps)
            if vstream.codec_context.name == "libx264":
                vstream.options = {"crf": "16", "preset": "veryfast"}
            if rotation % 360:
                # PyAV takes counter-clockwise degrees; the `rotate` tag is clockwise.
                vstream.set_display_rotation(-(rotation % 360))
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate, layout=_LAYOUTS[channels])
            astream.bit_rate = 16000 * channels
        n_audio = round(duration * sample_rate) if audio is not None else 0
        chunk = 1024
        audio_pos = 0

        def write_audio_until(seconds: float) -> None:
            nonlocal audio_pos
            assert astream is not None
            while audio_pos < n_audio and audio_pos / sample_rate <= seconds:
                n = min(chunk, n_audio - audio_pos)
                mono = tone_signal(n, sample_rate, tone_hz, start=audio_pos / sample_rate)
                planar = np.repeat(mono[None, :], channels, axis=0)  # (C, n)
                frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=_LAYOUTS[channels])
                frame.sample_rate, frame.pts = sample_rate, audio_pos
                frame.time_base = Fraction(1, sample_rate)
                container.mux(astream.encode(frame))
                audio_pos += n

        for i, t in enumerate(times):
            assert vstream is not None
            if pattern == "counter":
                picture = counter_picture(i, width, height)
            else:
                picture = waves_picture(t, width, height)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = round(t * 1000) if vfr else i
            container.mux(vstream.encode(frame))
            if astream is not None:
                write_audio_until(t)
        if astream is not None:
            write_audio_until(duration + 1)
            container.mux(astream.encode(None))
        if vstream is not None:
            container.mux(vstream.encode(None))
    if not video:
        return SyntheticVideo(path, [], n_audio / sample_rate)
    if not times:
        return SyntheticVideo(path, [], 0.0)
    last_step = 1 / fps
    if vfr:
        last_step = _VFR_DURATIONS_MS[(len(times) - 1) % len(_VFR_DURATIONS_MS)] / 1000
    return SyntheticVideo(path, times, times[-1] + last_step)


def make_audio_only(
    path: str | os.PathLike[str], duration: float = 2.0, channels: int = 1
) -> SyntheticVideo:
    """An audio file without a video stream (use an .m4a or .mka suffix)."""
    return make_video(path, duration=duration, video=False, channels=channels)


def truncate_file(path: str | os.PathLike[str], fraction: float) -> Path:
    """Cut a file in place to its first ``fraction`` of bytes, as an interrupted download does."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def random_bytes_file(path: str | os.PathLike[str], n: int, seed: int = 0) -> Path:
    """A file of ``n`` seeded random bytes: not a media file at all."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def mux_subtitles(
    video_path: str | os.PathLike[str],
    srt_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
) -> Path:
    """Copy a video's streams into an .mkv together with an embedded text subtitle stream."""
    out_path = Path(out_path)
    cmd = [
        ffmpeg_binary(), "-nostdin", "-v", "error", "-y",
        "-i", str(video_path), "-i", str(srt_path),
        "-map", "0", "-map", "1", "-c", "copy", "-c:s", "srt", str(out_path),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    return out_path


def make_anamorphic_video(
    path: str | os.PathLike[str],
    sample_aspect_ratio: int = 2,
    duration: float = 3.0,
    size: tuple[int, int] = (64, 64),
    bar: tuple[int, int] = (24, 16),
) -> Path:
    """A silent video whose stored pixels are `sample_aspect_ratio` times wider than tall (as
    DVD, DV and HDV footage stores them): black, with a white vertical bar over the coded
    columns ``[bar[0], bar[0] + bar[1])``. Players show the bar stretched by the ratio, so its
    width in a decoded picture tells whether the pixels were made square."""
    path = Path(path)
    (width, height), (left, bar_width) = size, bar
    draw = f"drawbox=x={left}:y=0:w={bar_width}:h={height}:color=white:t=fill"
    cmd = [
        ffmpeg_binary(), "-nostdin", "-v", "error", "-y",
        "-f", "lavfi", "-i", f"color=c=black:s={width}x{height}:r=8:d={duration}",
        "-vf", f"{draw},setsar={sample_aspect_ratio}", "-c:v", "libx264", "-pix_fmt", "yuv420p",
        str(path),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def make_oversized_video(path: str | os.PathLike[str], width: int = 16000,
                         height: int = 16000) -> Path:
    """A 2 kB MPEG-2 video (.mpg, .mkv, .ts, ...) whose headers state `width` x `height`.

    It is encoded at 64x64, then the size fields of each sequence header (12 bits each) and
    sequence extension (2 bits more each, up to 16383) are rewritten in place: the demuxer and
    decoder read the stated size, so decoding it allocates frames of that size while the file
    holds almost nothing (a reader should refuse it from the header alone).
    """
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg2video", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for index in range(20):
            frame = av.VideoFrame.from_ndarray(counter_picture(index, 64, 64), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = bytearray(path.read_bytes())
    at = data.find(b"\x00\x00\x01\xb3")
    assert at >= 0, "no MPEG-2 sequence header"
    while at >= 0:
        low_w, low_h = width & 0xFFF, height & 0xFFF
        data[at + 4:at + 7] = bytes([low_w >> 4, (low_w & 0xF) << 4 | low_h >> 8, low_h & 0xFF])
        ext = data.find(b"\x00\x00\x01\xb5", at)
        if ext >= 0 and data[ext + 4] >> 4 == 1:  # sequence extension: id, profile, ... sizes
            bits = int.from_bytes(data[ext + 4:ext + 7], "big") & ~(0xF << 5)
            bits |= (width >> 12) << 7 | (height >> 12) << 5
            data[ext + 4:ext + 7] = bits.to_bytes(3, "big")
        at = data.find(b"\x00\x00\x01\xb3", at + 4)
    path.write_bytes(bytes(data))
    return path


def write_png_header(path: str | os.PathLike[str], width: int, height: int) -> Path:
    """A PNG of a few dozen bytes that states `width` x `height` RGB: a real IHDR, then an IDAT
    of one row. Pillow opens it (reading the header only) and allocates the whole picture when
    it decodes."""
    path = Path(path)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(bytes(1 + 3 * width))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
                     + chunk(b"IEND", b""))
    return path


def add_cover_art(
    media_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    colour: tuple[int, int, int] = (0, 200, 0),
) -> Path:
    """Copy a file's streams into an .mp4 with a cover picture, as music and podcast files
    carry: a one-frame PNG stream with the ``attached_pic`` disposition, in a plain colour.

    The cover is made the file's *first* stream (its metadata box moved ahead of the tracks,
    which the MP4 demuxer then lists after it), so a reader that takes the first video stream
    of the file gets the cover, not the footage.
    """
    out_path = Path(out_path)
    cover = out_path.with_name(out_path.name + ".cover.png")
    Image.new("RGB", (32, 32), colour).save(cover)
    cmd = [
        ffmpeg_binary(), "-nostdin", "-v", "error", "-y", "-i", str(cover), "-i", str(media_path),
        "-map", "0", "-map", "1", "-c", "copy", "-disposition:v:0", "attached_pic", str(out_path),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    cover.unlink()
    _metadata_before_tracks(out_path)
    return out_path


def _metadata_before_tracks(path: Path) -> None:
    """Move an MP4's ``moov/udta`` box (where the cover lives) ahead of its ``trak`` boxes.
    Only the order inside ``moov`` changes, not its size, so every media offset stays valid."""
    data = path.read_bytes()
    rebuilt = []
    for kind, box in _mp4_boxes(data, 0, len(data)):
        if kind == b"moov":
            children = _mp4_boxes(box, 8, len(box))
            children.sort(key=lambda child: {b"mvhd": 0, b"udta": 1}.get(child[0], 2))
            box = box[:8] + b"".join(child for _, child in children)
        rebuilt.append(box)
    path.write_bytes(b"".join(rebuilt))


def _mp4_boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, bytes]]:
    """(type, whole box) of each MP4 box in ``data[start:end]``; 32-bit sizes only, which is
    all a file of a few seconds needs."""
    boxes, pos = [], start
    while pos < end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size < 8:
            raise ValueError(f"MP4 box {kind!r} at byte {pos}: 64-bit or open sizes unhandled")
        boxes.append((kind, data[pos : pos + size]))
        pos += size
    return boxes


def read_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """Every sample under out/shards/*.tar (final names only): key -> member -> bytes."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, kind = member.name.split(".", 1)
                handle = tar.extractfile(member)
                assert handle is not None
                samples.setdefault(key, {})[kind] = handle.read()
    return samples


def i420_frames(data: bytes) -> np.ndarray:
    """The frames of an mp4's video stream as PyAV decodes them, each as its yuv420p frame
    buffer (``VideoFrame.to_ndarray()``: (3H/2, W), Y rows then U then V): (T, 3H/2, W)."""
    with av.open(BytesIO(data), "r", format="mp4") as container:
        return np.stack([frame.to_ndarray(format="yuv420p")
                         for frame in container.decode(video=0)])
