"""Streaming loader throughput per CPU core, for H.264 and raw clips, against what a GPU eats.

Over the shards of a prepared folder (mp4 clips, as `omni prepare` writes them) and a raw twin
of it (the same samples with each clip decoded once and stored as ``npy``) it times one epoch
of:

- `tarfile`: every shard opened with the standard library, every member's bytes read: the
  floor of I/O and tar parsing, with nothing decoded;
- `pipeline.loader`'s `build_shard_loader` with `--workers` DataLoader workers (0 = in the main
  process): shard and sample shuffle, safe decoding (H.264 or npy clip, JPEG, npy mel),
  validation, tensors and batches, i.e. what training gets;

and prints samples/s of each, samples/s per CPU core (a loader with W workers keeps W cores
busy decoding, 0 workers one), and the ratio loader/tarfile. Each figure is the fastest of
`--repeats` epochs, after one warm-up epoch that fills the page cache; a loader epoch includes
starting its worker processes, as a training epoch does.

It also prints:

- the rate a GPU consumes samples of this shape when training the default model,
  ``samples/s = peak bf16 FLOP/s * MFU / (6 * parameters * tokens per sample)`` (H200: 989e12
  dense bf16 FLOP/s, `bench/train_step.PEAK_BF16`, at 45 % MFU), where a sample's tokens are
  its source's plus its target's averaged over the balanced (source, target) pairs of the
  modalities the data holds, i.e. twice the mean of their token counts (text: the mean
  non-padding tokens; a corpus without transcripts trains no text pair); and from it the CPU
  cores the loader needs to feed one GPU;
- the bytes of one batch's tensors that cross from a worker to the trainer and on to the
  device: stored dtypes (uint8 pixels, float16 mel) against float32 model units;
- the per-epoch start-up of the workers: the time to an epoch's first batch (no shuffle
  buffer) with W workers less that with none, which persistent workers would save once per
  epoch (see `pipeline.loader.shard_loader.ShardLoader`).

Without `--prepared` it generates the videos of `bench/prepare.py` and prepares them with
`omni prepare --samples-per-shard 16`, so that two workers have shards to share.

    python bench/loader.py                              # 4 generated videos of 20 s
    python bench/loader.py --prepared data/prepared --workers 0 1 2 4
    python bench/loader.py --json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from prepare import make_videos, omni_prepare
from train_step import PEAK_BF16

from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.config import MODALITIES, model_sizes
from omnilatent.tasks import content_tokens
from pipeline.loader.samples import Batch
from pipeline.loader.shard_loader import build_shard_loader
from pipeline.prepare.run import default_workers
from pipeline.shards.decode import decode_member
from pipeline.shards.encode import encode_clip
from pipeline.shards.manifest import read_manifest
from pipeline.shards.schema import expected_from_config
from pipeline.shards.shardset import resolve_shards, split_member_name

GPU = "H200"
MFU = 0.45
FLOAT32_BYTES = 4


def tar_epoch(urls: list[str]) -> int:
    """Read every member's bytes of every shard; return the number of samples (keys)."""
    keys = set()
    for url in urls:
        with tarfile.open(url) as archive:
            for member in archive:
                handle = archive.extractfile(member)
                if handle is not None:
                    handle.read()
                keys.add((url, member.name.split(".", 1)[0]))
    return len(keys)


def raw_twin(folder: Path, out: Path) -> Path:
    """A copy of prepared `folder` whose mp4 clips are decoded once and stored as npy: the
    same samples in the same shards, so the two encodings are timed on identical content."""
    manifest = json.loads((folder / "manifest.json").read_text())
    (out / "shards").mkdir(parents=True)
    for entry in manifest["shards"]:
        target = out / entry["path"]
        with tarfile.open(folder / entry["path"]) as source, tarfile.open(target, "w") as tar:
            for member in source:
                handle = source.extractfile(member)
                if handle is None:
                    continue
                data, name = handle.read(), member.name
                prefix, suffix = split_member_name(name)
                if suffix == "clip.mp4":
                    data = encode_clip(decode_member(suffix, data), "npy", 1)
                    name = f"{prefix}.clip.npy"
                elif suffix == "json":
                    data = json.dumps({**json.loads(data), "clip_encoding": "npy"}).encode()
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), member.mtime
                tar.addfile(info, io.BytesIO(data))
        entry["bytes"] = target.stat().st_size
    manifest["clip_encoding"] = "npy"
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def loader_epoch(folder: Path, batch_size: int, workers: int) -> int:
    """One epoch of the training loader; return the number of samples it delivered."""
    loader = build_shard_loader(folder, batch_size, num_workers=workers, epochs=1)
    return sum(len(batch["__key__"]) for batch in loader)


def first_batch_s(folder: Path, workers: int, repeats: int) -> float:
    """Median seconds from an epoch's start to its first batch (batch 1, no shuffle buffer):
    with workers, mostly starting them."""
    times = []
    for _ in range(repeats + 1):
        loader = build_shard_loader(folder, 1, num_workers=workers, shuffle_buffer=0, epochs=1)
        start = time.perf_counter()
        epoch = iter(loader)
        next(epoch)
        times.append(time.perf_counter() - start)
        epoch.close()  # ends the epoch's DataLoader and its workers
    return statistics.median(times[1:])


def rate(fn: Callable[[], int], repeats: int) -> float:
    """Samples per second of the fastest of `repeats` runs of `fn`, after a warm-up run.

    The fastest run is the one least disturbed by other jobs on a shared machine.
    """
    fn()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        samples = fn()
        best = max(best, samples / (time.perf_counter() - start))
    return best


def batch_bytes(batch: Batch) -> dict[str, int]:
    """Bytes of a batch's tensors as the loader sends them, and as float32 model units."""
    stored = sum(value.nbytes for value in batch.values() if isinstance(value, torch.Tensor))
    units = sum(value.numel() * FLOAT32_BYTES if key in ("video", "image", "audio")
                else value.nbytes
                for key, value in batch.items() if isinstance(value, torch.Tensor))
    return {"stored": stored, "float32": units}


def gpu_consumption(folder: Path, batch: Batch) -> dict[str, Any]:
    """Samples/s the default model trains on at MFU of the GPU's peak, for this data's shape:
    6 * parameters * tokens per sample FLOPs each."""
    manifest = read_manifest(folder)
    assert manifest is not None
    config = OmniLatentConfig(**model_sizes(expected_from_config(manifest.config)))
    params = OmniLatentModel(config).num_parameters()
    tokens = {m: content_tokens(m, batch[m], config.audio_stride, config.patch_size,
                                config.tubelet_size) / len(batch["__key__"])
              for m in MODALITIES}  # text: the batch's mean non-padding tokens
    held = [count for count in tokens.values() if count > 0]  # pairs the data can train
    per_sample = 2 * sum(held) / len(held)
    flops = 6 * params * per_sample
    return {"gpu": GPU, "peak_flops": PEAK_BF16[GPU], "mfu": MFU, "params": params,
            "tokens": tokens, "tokens_per_sample": per_sample, "flops_per_sample": flops,
            "samples_per_s": PEAK_BF16[GPU] * MFU / flops}


def measure(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    urls = list(resolve_shards(folder).urls)
    tar_rate = rate(lambda: tar_epoch(urls), args.repeats)
    rates = {workers: rate(lambda w=workers: loader_epoch(folder, args.batch_size, w),
                           args.repeats)
             for workers in args.workers}
    return {
        "shards": len(urls), "samples": tar_epoch(urls),
        "bytes": sum(Path(url).stat().st_size for url in urls),
        "tarfile_samples_per_s": round(tar_rate, 1),
        "loader_samples_per_s": {str(w): round(r, 1) for w, r in rates.items()},
        "per_core_samples_per_s": {str(w): round(r / max(1, w), 1) for w, r in rates.items()},
        "ratio": {str(w): r / tar_rate for w, r in rates.items()},
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    folder = args.prepared
    if folder is None:
        videos = make_videos(args.video_dir or work / "videos", args.videos, args.duration)
        folder = work / "prepared"
        omni_prepare(videos[0].parent, folder,
                     ["--samples-per-shard", str(args.samples_per_shard)], {})
    twin = raw_twin(folder, work / "raw")
    load_before = os.getloadavg()
    encodings = {"mp4": measure(folder, args), "npy": measure(twin, args)}
    startup = {str(w): first_batch_s(twin, w, args.repeats) for w in args.workers}
    batch = next(iter(build_shard_loader(folder, args.batch_size, epochs=1)))
    gpu = gpu_consumption(folder, batch)
    best_core = {name: max(result["per_core_samples_per_s"].values())
                 for name, result in encodings.items()}
    shutil.rmtree(twin)
    return {
        "prepared": str(folder) if args.prepared is not None else None,
        "batch_size": args.batch_size, "cpus": default_workers(), "repeats": args.repeats,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "encodings": encodings,
        "batch_bytes": batch_bytes(batch),
        "first_batch_s": startup,
        "gpu": gpu,
        "cores_per_gpu": {name: gpu["samples_per_s"] / per_core
                          for name, per_core in best_core.items()},
    }


def report(result: dict[str, Any]) -> None:
    first = result["encodings"]["mp4"]
    print(f"{first['samples']} samples in {first['shards']} shards, batch "
          f"{result['batch_size']}; {result['cpus']} CPUs; best of {result['repeats']} epochs; "
          f"load average {result['load_before'][0]:.2f} before, "
          f"{result['load_after'][0]:.2f} after")
    for name, enc in result["encodings"].items():
        print(f"{name} clips ({enc['bytes'] / 1e6:.1f} MB):")
        print(f"  tarfile, every member read     {enc['tarfile_samples_per_s']:9.1f} samples/s")
        for workers, samples_per_s in enc["loader_samples_per_s"].items():
            print(f"  loader, {workers} workers               {samples_per_s:9.1f} samples/s   "
                  f"{enc['per_core_samples_per_s'][workers]:7.1f} per core   "
                  f"loader/tarfile = {enc['ratio'][workers]:.4f}")
    sizes = result["batch_bytes"]
    print(f"one batch's tensors, worker -> trainer -> device: {sizes['stored'] / 1e6:.2f} MB "
          f"(uint8 pixels, float16 mel) vs {sizes['float32'] / 1e6:.2f} MB as float32 units "
          f"({sizes['float32'] / sizes['stored']:.2f}x)")
    startup = result["first_batch_s"]
    base = startup.get("0")
    print("time to an epoch's first batch (raw clips, no shuffle buffer): " + ", ".join(
        f"{w} workers {s * 1e3:.0f} ms" + (f" (+{(s - base) * 1e3:.0f})" if base is not None
                                           and w != "0" else "")
        for w, s in startup.items()))
    gpu = result["gpu"]
    tokens = ", ".join(f"{m} {n:g}" for m, n in gpu["tokens"].items())
    print(f"GPU consumption, default model ({gpu['params'] / 1e6:.1f}M parameters), this "
          f"sample shape: tokens {tokens}")
    print(f"  samples/s = peak * MFU / (6 * params * tokens per sample) = "
          f"{gpu['peak_flops']:.3g} * {gpu['mfu']} / (6 * {gpu['params']} * "
          f"{gpu['tokens_per_sample']:g}) = {gpu['samples_per_s']:.0f} samples/s on one "
          f"{gpu['gpu']} (tokens per sample = 2 x the mean over the modalities held: source + "
          f"target)")
    print("  CPU cores the loader needs to feed one GPU: " + ", ".join(
        f"{name} {cores:.0f}" for name, cores in result["cores_per_gpu"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", type=Path, default=None,
                        help="a folder written by omni prepare (default: prepare one)")
    parser.add_argument("--video-dir", type=Path, default=None,
                        help="where to generate the videos, or reuse them (bench/prepare.py)")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per video")
    parser.add_argument("--samples-per-shard", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="epochs; the fastest counts")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="omni-bench-loader-") as tmp:
        result = run(args, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    main()
