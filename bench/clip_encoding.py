"""Measure the clip encodings of shard schema v1 (raw ``npy`` vs H.264 ``mp4``).

For each encoding it prints bytes per clip and per whole sample, encode and decode time per
clip, the mp4 round-trip error in grey levels, and the loader's samples/s over a small shard
set; then the npy/mp4 ratios, which `pipeline.shards.schema.DEFAULT_CLIP_ENCODING` was chosen by.

Content imitates natural video: a 1/f-spectrum scene (smoother colour than brightness, as in
photographs), panning by a random speed (a third of the clips hold still, like slides or a
talking head), a moving object, and sensor noise of sigma 2 grey levels.

    python bench/clip_encoding.py                 # defaults: 128 clips, 4 shards
    python bench/clip_encoding.py --crf 18 20 23  # also sweep the x264 CRF
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import webdataset as wds

from pipeline.config import PrepareConfig
from pipeline.loader.shard_loader import build_shard_loader
from pipeline.media.audio import log_mel
from pipeline.media.discover import video_id
from pipeline.shards.decode import decode_member
from pipeline.shards.encode import MP4_CRF, MP4_PRESET, encode_clip, encode_sample
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
    (root / "manifest.json").write_text(json.dumps({"shards": entries,
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
