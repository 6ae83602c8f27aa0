"""Measure the clip encodings of shard schema v1 (raw ``npy`` vs H.264 ``mp4``).

For each encoding it prints bytes per clip and per whole sample, encode and decode time per
clip, the mp4 round-trip error in grey levels, and the loader's samples/s over a small shard
set; then the npy/mp4 ratios, which `pipeline.shards.schema.DEFAULT_CLIP_ENCODING` was chosen by.

Content imitates natural video: a 1/f-spectrum scene (smoother colour than brightness, as in
photographs), panning by a random speed (a third of the clips hold still, like slides or a
talking head), a moving object, and sensor noise of sigma 2 grey levels.

    python bench/clip_encoding.py                 # defaults: 128 clips, 4 shards
    python bench/clip_encoding.py --crf 18 20 23  # also sweep the x264 CRF
    python bench/clip_encoding.py --clips 32 --preset ultrafast veryfast fast medium

It also splits the CPU time of one mp4 clip (`time.process_time`, best of the runs) into the
RGB -> yuv420p conversion, x264's start-up and teardown (an encoder opened and closed with no
frame), and x264 encoding the 16 frames with one encoder kept for all clips and an IDR frame
forced at each clip's start (what one encoder per video would cost): whether per-clip encoder
start-up is worth saving.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import webdataset as wds

from pipeline.config import SCHEMA_VERSION, PrepareConfig
from pipeline.loader.shard_loader import build_shard_loader
from pipeline.media.audio import log_mel
from pipeline.media.discover import video_id
from pipeline.media.h264 import x264_options
from pipeline.shards.decode import decode_member
from pipeline.shards.encode import MP4_CRF, MP4_PIX_FMT, MP4_PRESET, encode_clip, encode_sample
from pipeline.shards.schema import CLIP_ENCODINGS, SampleMeta

SCENE = 640  # scene side in pixels; the image crop is image_size, frames are half of it


def spectrum_noise(rng: np.random.Generator, size: int, exponent: float) -> np.ndarray:
    """Zero-mean, unit-variance noise whose amplitude falls as 1/f**exponent: (size, size)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    radius = np.hypot(fx, fy)
    radius[0, 0] = 1.0
    spectrum = rng.standard_normal(radius.shape) + 1j * rng.standard_normal(radius.shape)
    field = np.fft.irfft2(spectrum / radius**exponent, s=(size, size))
    return (field - field.mean()) / field.std()


def natural_scene(rng: np.random.Generator) -> np.ndarray:
    """A (SCENE, SCENE, 3) float RGB picture with natural-image statistics."""
    luma = 118 + 48 * spectrum_noise(rng, SCENE, 1.0)
    blue = 18 * spectrum_noise(rng, SCENE, 1.5)  # chroma: less energy at high frequencies
    red = 18 * spectrum_noise(rng, SCENE, 1.5)
    return np.stack([luma + 1.402 * red, luma - 0.344 * blue - 0.714 * red,
                     luma + 1.772 * blue], axis=-1)


def make_clip(rng: np.random.Generator, config: PrepareConfig) -> tuple[np.ndarray, np.ndarray]:
    """(frames (T, F, F, 3), image (S, S, 3)) uint8 of one panning shot, as prepare makes them."""
    scene = natural_scene(rng)
    size, frames_n, half = config.image_size, config.video_frames, config.image_size // 2
    still = rng.random() < 1 / 3
    velocity = np.zeros(2) if still else rng.uniform(-6, 6, 2)  # pixels per frame at image size
    margin = int(np.abs(velocity).max() * frames_n) + 1
    origin = rng.uniform(margin, SCENE - size - margin, 2)
    ball = rng.uniform(size * 0.2, size * 0.8, 2)
    ball_velocity = rng.uniform(-5, 5, 2)
    y, x = np.mgrid[0:size, 0:size]
    colour = rng.uniform(0, 255, 3)
    frames, image = [], None
    for t in range(frames_n):
        top, left = (origin + velocity * t).astype(int)
        view = scene[top : top + size, left : left + size].copy()  # (S, S, 3)
        cy, cx = ball + ball_velocity * t
        view[(y - cy) ** 2 + (x - cx) ** 2 < (size / 10) ** 2] = colour
        view = np.clip(view + rng.normal(0, 2, view.shape), 0, 255)
        if t == frames_n // 2:
            image = view.round().astype(np.uint8)
        small = view.reshape(half, 2, half, 2, 3).mean(axis=(1, 3))  # (F, F, 3) box filter
        if config.video_size != half:
            raise ValueError("the bench assumes video_size == image_size / 2 (the defaults)")
        frames.append(small.round().astype(np.uint8))
    assert image is not None
    return np.stack(frames), image


def speech_like(rng: np.random.Generator, config: PrepareConfig) -> np.ndarray:
    """Pink noise with a 4 Hz syllable envelope, peaking at -6 dBFS: (samples,) float32."""
    n = config.samples_per_clip
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / config.sample_rate), 100.0))
    noise = np.fft.irfft(spectrum, n)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(n) / config.sample_rate)
    return (0.5 * noise / np.abs(noise).max() * envelope).astype(np.float32)


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of `fn` over `repeats` runs, in seconds.

    The fastest run is the one least disturbed by other jobs on shared CPUs, so it is the
    closest estimate of the code's own cost.
    """
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_timed(fn: Callable[[], object], repeats: int) -> float:
    """Least CPU seconds of this process over `repeats` runs of `fn`: what the work costs,
    however many other jobs share the cores."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def x264_context(width: int, height: int, fps: int,
                 preset: str = MP4_PRESET) -> av.CodecContext:
    """An opened libx264 encoder with the shards' settings (`encode_clip`'s), no container."""
    context = av.CodecContext.create("libx264", "w")
    context.width, context.height, context.pix_fmt = width, height, MP4_PIX_FMT
    context.time_base, context.framerate = Fraction(1, fps), fps
    context.options = dict(x264_options(MP4_CRF, preset))
    context.open()
    return context


def yuv_frames(clips: list[np.ndarray]) -> list[list[av.VideoFrame]]:
    """Each clip's frames converted to the encoder's yuv420p, as `encode_clip` feeds x264."""
    return [[av.VideoFrame.from_ndarray(p, format="rgb24").reformat(format=MP4_PIX_FMT)
             for p in clip] for clip in clips]


def x264_clips(yuv: list[list[av.VideoFrame]], fps: int, preset: str) -> int:
    """Encode each clip with its own x264 encoder, as `encode_clip` does, without the mp4
    container; returns the bytes of all the clips' packets."""
    total = 0
    for clip in yuv:
        context = x264_context(clip[0].width, clip[0].height, fps, preset)
        for index, frame in enumerate(clip):
            frame.pts, frame.pict_type = index, av.video.frame.PictureType.NONE
            total += sum(packet.size for packet in context.encode(frame))
        total += sum(packet.size for packet in context.encode(None))
    return total


def encode_breakdown(clips: list[np.ndarray], fps: int, repeats: int) -> dict[str, float]:
    """CPU ms per clip of `encode_clip` and of its parts (see the module docstring)."""
    _, height, width, _ = clips[0].shape
    yuv = yuv_frames(clips)

    def convert() -> None:
        for clip in clips:
            for picture in clip:
                av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format=MP4_PIX_FMT)

    def start_and_stop() -> None:
        for _ in clips:
            x264_context(width, height, fps).encode(None)

    def one_encoder() -> None:
        context, pts = x264_context(width, height, fps), 0
        for clip in yuv:
            for index, frame in enumerate(clip):
                frame.pts, pts = pts, pts + 1
                frame.pict_type = (av.video.frame.PictureType.I if index == 0
                                   else av.video.frame.PictureType.NONE)
                context.encode(frame)
        context.encode(None)

    parts = {"encode_clip": lambda: [encode_clip(c, "mp4", fps) for c in clips],
             "rgb24_to_yuv420p": convert, "x264_start_and_stop": start_and_stop,
             "x264_one_encoder_idr_per_clip": one_encoder}
    return {name: cpu_timed(fn, repeats) / len(clips) * 1e3 for name, fn in parts.items()}


def yuv420_error(clips: list[np.ndarray]) -> float:
    """Mean abs error of the RGB -> yuv420p -> RGB conversion alone, without the codec."""
    errors = []
    for clip in clips:
        for picture in clip:
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            back = frame.reformat(format="yuv420p").reformat(format="rgb24").to_ndarray()
            errors.append(np.abs(back.astype(np.float32) - picture).mean())
    return float(np.mean(errors))


def write_shard_set(root: Path, samples: list[dict[str, bytes | str]], shards: int,
                    config: PrepareConfig) -> int:
    """Shards under root/shards plus a manifest; returns the total bytes written."""
    (root / "shards").mkdir(parents=True)
    per_shard = -(-len(samples) // shards)
    entries = []
    for shard in range(shards):
        path = root / "shards" / f"shard-{shard:06d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for sample in samples[shard * per_shard : (shard + 1) * per_shard]:
                writer.write(sample)
        entries.append({"path": f"shards/{path.name}", "samples": per_shard,
                        "bytes": path.stat().st_size})
    (root / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION,
                                                    "shards": entries,
                                                    "config": config.to_dict()}))
    return sum(entry["bytes"] for entry in entries)


def loader_rate(root: Path, batch_size: int, workers: int, repeats: int) -> float:
    """Samples per second of one epoch of the loader (after one warm-up epoch)."""
    loader = build_shard_loader(root, batch_size, num_workers=workers, shuffle_buffer=256)
    count = sum(len(batch["__key__"]) for batch in loader)
    seconds = timed(lambda: sum(1 for _ in loader), repeats)
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=128)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--crf", type=int, nargs="*", default=[])
    parser.add_argument("--preset", nargs="*", default=[], help="also sweep the x264 preset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = PrepareConfig()
    rng = np.random.default_rng(args.seed)
    content = [make_clip(rng, config) for _ in range(args.clips)]
    mels = [log_mel(speech_like(rng, config), config) for _ in range(args.clips)]
    clips = [frames for frames, _ in content]
    print(f"{args.clips} clips of {clips[0].shape} uint8 ({clips[0].nbytes} bytes raw), "
          f"mp4 = libx264 crf {MP4_CRF} preset {MP4_PRESET} yuv420p; best of "
          f"{args.repeats} runs")

    results: dict[str, dict[str, float]] = {}
    for encoding in CLIP_ENCODINGS:
        blobs = [encode_clip(clip, encoding, config.fps) for clip in clips]
        encode_s = timed(lambda enc=encoding: [encode_clip(c, enc, config.fps) for c in clips],
                         args.repeats)
        member = f"clip.{encoding}"
        decode_s = timed(lambda blobs=blobs, member=member: [decode_member(member, b)
                                                            for b in blobs], args.repeats)
        decoded = [decode_member(member, blob) for blob in blobs]
        error = float(np.mean([np.abs(d.astype(np.float32) - c).mean()
                               for d, c in zip(decoded, clips, strict=True)]))
        samples = []
        for index, ((frames, image), mel) in enumerate(zip(content, mels, strict=True)):
            vid = video_id(f"bench/video{index // 50}.mp4")
            meta = SampleMeta.build(
                config, source=f"bench/video{index // 50}.mp4", video_id=vid,
                clip_index=index % 50, start=float(index % 50), end=index % 50 + 2.0,
                rotation=0, has_audio=True, transcript_source="srt", transcript_timed=True,
                clip_encoding=encoding)
            samples.append(encode_sample(meta.key, meta, mel, image, frames,
                                         "and so the lecture goes on about shards", config))
        with tempfile.TemporaryDirectory() as tmp:
            total = write_shard_set(Path(tmp), samples, args.shards, config)
            rates = {workers: loader_rate(Path(tmp), args.batch_size, workers, args.repeats)
                     for workers in args.workers}
        results[encoding] = {
            "clip_bytes": float(np.mean([len(b) for b in blobs])),
            "sample_bytes": total / args.clips,
            "encode_ms": encode_s / args.clips * 1e3,
            "decode_ms": decode_s / args.clips * 1e3,
            "mae": error,
            **{f"loader_{w}w": rate for w, rate in rates.items()},
        }
        row = results[encoding]
        print(f"{encoding:>4}: clip {row['clip_bytes'] / 1e3:7.1f} kB | sample (tar) "
              f"{row['sample_bytes'] / 1e3:7.1f} kB | encode {row['encode_ms']:6.2f} ms | "
              f"decode {row['decode_ms']:6.2f} ms | mean abs error {error:5.2f} grey | loader "
              + ", ".join(f"{rate:6.0f} samples/s ({w} workers)" for w, rate in rates.items()))

    npy, mp4 = results["npy"], results["mp4"]
    print(f"npy/mp4: clip bytes {npy['clip_bytes'] / mp4['clip_bytes']:.1f}x, sample bytes "
          f"{npy['sample_bytes'] / mp4['sample_bytes']:.1f}x; loader throughput mp4/npy "
          + ", ".join(f"{mp4[f'loader_{w}w'] / npy[f'loader_{w}w']:.2f} ({w} workers)"
                      for w in args.workers)
          + f"; mp4 encode {mp4['encode_ms']:.1f} ms vs npy {npy['encode_ms']:.2f} ms per clip")
    print(f"yuv420p conversion alone (no codec): mean abs error {yuv420_error(clips[:16]):.2f}")

    parts = encode_breakdown(clips, config.fps, args.repeats)
    print(f"mp4 encode, CPU ms per clip: encode_clip {parts['encode_clip']:.2f} = rgb24 -> "
          f"yuv420p {parts['rgb24_to_yuv420p']:.2f} + x264 start-up and teardown "
          f"{parts['x264_start_and_stop']:.2f} + the rest (x264 encoding, mp4 muxing); x264 "
          f"encoding alone in one encoder for all clips, an IDR per clip "
          f"{parts['x264_one_encoder_idr_per_clip']:.2f}")

    yuv = yuv_frames(clips)
    for preset in args.preset:  # x264 alone: the mp4 muxing is the same for every preset
        size = x264_clips(yuv, config.fps, preset)
        encode_s = cpu_timed(lambda preset=preset: x264_clips(yuv, config.fps, preset),
                             args.repeats)
        print(f"preset {preset:>9}: x264 {encode_s / args.clips * 1e3:5.2f} CPU ms per clip, "
              f"{size / args.clips / 1e3:5.1f} kB per clip")

    for crf in args.crf:
        blobs = [encode_clip(clip, "mp4", config.fps, crf=crf) for clip in clips]
        encode_s = timed(lambda crf=crf: [encode_clip(c, "mp4", config.fps, crf=crf)
                                          for c in clips], args.repeats)
        decoded = [decode_member("clip.mp4", blob) for blob in blobs]
        error = float(np.mean([np.abs(d.astype(np.float32) - c).mean()
                               for d, c in zip(decoded, clips, strict=True)]))
        print(f"crf {crf:2d}: clip {np.mean([len(b) for b in blobs]) / 1e3:6.1f} kB | encode "
              f"{encode_s / args.clips * 1e3:5.1f} ms | mean abs error {error:4.2f} grey")


if __name__ == "__main__":
    main()
