"""Streaming loader throughput against plain `tarfile` reading of the same shards.

Over the shards of a prepared folder it times one epoch of:

- `tarfile`: every shard opened with the standard library, every member's bytes read: the
  floor of I/O and tar parsing, with nothing decoded;
- `pipeline.loader.build_shard_loader` with `--workers` DataLoader workers (0 = in the main
  process): shard and sample shuffle, safe decoding (H.264 clip, JPEG, npy), validation,
  tensors and batches, i.e. what training gets;

and prints samples/s of each and the ratio loader/tarfile per worker count. Each figure is the
fastest of `--repeats` epochs, after one warm-up epoch that fills the page cache; a loader
epoch includes starting its worker processes, as a training epoch does.

Without `--prepared` it generates the videos of `bench/prepare.py` and prepares them with
`omni prepare --samples-per-shard 16`, so that two workers have shards to share.

    python bench/loader.py                              # 4 generated videos of 20 s
    python bench/loader.py --prepared data/prepared --workers 0 1 2 4
    python bench/loader.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prepare import make_videos, omni_prepare

from pipeline.loader import build_shard_loader
from pipeline.prepare import default_workers
from pipeline.shardset import resolve_shards


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


def loader_epoch(folder: Path, batch_size: int, workers: int) -> int:
    """One epoch of the training loader; return the number of samples it delivered."""
    loader = build_shard_loader(folder, batch_size, num_workers=workers, epochs=1)
    return sum(len(batch["__key__"]) for batch in loader)


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


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    folder = args.prepared
    if folder is None:
        videos = make_videos(args.video_dir or work / "videos", args.videos, args.duration)
        folder = work / "prepared"
        omni_prepare(videos[0].parent, folder, default_workers(),
                     ["--samples-per-shard", str(args.samples_per_shard)])
    urls = list(resolve_shards(folder).urls)
    load_before = os.getloadavg()
    tar_rate = rate(lambda: tar_epoch(urls), args.repeats)
    loader_rates = {workers: rate(lambda w=workers: loader_epoch(folder, args.batch_size, w),
                                  args.repeats)
                    for workers in args.workers}
    return {
        "prepared": str(folder) if args.prepared is not None else None,
        "shards": len(urls), "samples": tar_epoch(urls),
        "bytes": sum(Path(url).stat().st_size for url in urls),
        "batch_size": args.batch_size, "cpus": default_workers(), "repeats": args.repeats,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "tarfile_samples_per_s": round(tar_rate, 1),
        "loader_samples_per_s": {str(w): round(r, 1) for w, r in loader_rates.items()},
        "ratio": {str(w): r / tar_rate for w, r in loader_rates.items()},
    }


def report(result: dict[str, Any]) -> None:
    print(f"{result['samples']} samples in {result['shards']} shards "
          f"({result['bytes'] / 1e6:.1f} MB), batch {result['batch_size']}; "
          f"{result['cpus']} CPUs; best of {result['repeats']} epochs; load average "
          f"{result['load_before'][0]:.2f} before, {result['load_after'][0]:.2f} after")
    print(f"  tarfile, every member read     {result['tarfile_samples_per_s']:9.1f} samples/s")
    for workers, samples_per_s in result["loader_samples_per_s"].items():
        print(f"  loader, {workers} workers               {samples_per_s:9.1f} samples/s   "
              f"loader/tarfile = {result['ratio'][workers]:.4f}")


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
