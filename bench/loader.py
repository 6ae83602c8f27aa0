"""Streaming loader cost in CPU seconds per sample, for H.264 and raw clips, against its decode
floor and against what a GPU eats.

Over the shards of a prepared folder (mp4 clips, as `omni prepare` writes them) and a raw twin
of it (the same samples with each clip decoded once and stored as ``npy``) it times one epoch
of:

- `tarfile`: every shard opened with the standard library, every member's bytes read: the
  floor of I/O and tar parsing, with nothing decoded;
- the **decode floor**: the same samples' members, read into memory first, each decoded alone
  with no pipeline around it: the clip (PyAV H.264 decode on one thread without pixel
  conversion, or ``np.load`` of an npy clip), the JPEG (TurboJPEG by simplejpeg, as the
  loader decodes it: cheaper than PIL's decode alone), the mel (``np.load``), the text and
  the json (UTF-8, ``json.loads``). The clip is opened as PyAV opens a file: its streams
  probed, which decodes its first frame with a decoder of the demuxer's own, and a decoder
  opened for it. The loader does neither (one decoder kept per thread, clips opened with no
  decoder for the probe), so for mp4 clips the floor is also timed with its clips opened as
  the loader opens them ("unprobed"), and loader/floor printed against both;
- `pipeline.loader`'s `build_shard_loader` with `--workers` DataLoader workers (0 = in the main
  process): shard and sample shuffle, safe decoding (H.264 or npy clip, JPEG, npy mel),
  validation, tensors and batches, i.e. what training gets;

and prints for each its wall samples/s and its CPU milliseconds per sample, counted over every
process it uses: the main process's `time.process_time` (all its threads) plus the run time
of its live DataLoader workers' threads (``/proc/<pid>/task/<tid>/schedstat``) and of exited
children (``RUSAGE_CHILDREN``). CPU time hardly moves when other jobs compete for the cores,
so it is the figure that holds on a busy machine; wall time does not. It prints loader/floor
in samples per CPU-second (1.0: the loader costs no more than decoding its members). Each
figure is the best of `--repeats` epochs (wall and CPU each their minimum), after one warm-up
epoch that fills the page cache, and the epochs are interleaved: each round runs the tar
reading, the floor and every loader once, so a change of load on a shared machine touches
them alike and loader/floor compares epochs run side by side. A loader's epochs are its
steady ones, as training runs them (one loader, its workers kept across epochs), and the
workers' start-up, paid once per loader, is printed apart: the first epoch's CPU less a
steady one's.
Torch's intra-op threads follow ``OMP_NUM_THREADS`` (printed): run it with 1 and without.

It also prints:

- the rate a GPU consumes samples of this shape when training the default model,
  ``samples/s = peak bf16 FLOP/s * MFU / (6 * parameters * tokens per sample)`` (H200: 989e12
  dense bf16 FLOP/s, `bench/train_step.PEAK_BF16`, at 45 % MFU), where a sample's tokens are
  its source's plus its target's averaged over the balanced (source, target) pairs of the
  modalities the data holds, i.e. twice the mean of their token counts (text: the mean
  non-padding tokens; a corpus without transcripts trains no text pair); and from it the CPU
  cores the loader needs to feed one GPU: that rate times the loader's CPU seconds per sample
  (its best worker count), and the same for the floor;
- the bytes of one batch's tensors that cross from a worker to the trainer and on to the
  device: stored dtypes (I420 mp4 clips, uint8 pixels, float16 mel) against float32 model
  units;
- the per-epoch start-up of the workers: the time to an epoch's first batch (no shuffle
  buffer) with W workers less that with none, paid once per loader (its workers persist
  across epochs, see `pipeline.loader.shard_loader.ShardLoader`).

Without `--prepared` it generates the videos of `bench/prepare.py` and prepares them with
`omni prepare --samples-per-shard 16`, so that two workers have shards to share.

    python bench/loader.py                              # 4 generated videos of 20 s
    OMP_NUM_THREADS=1 python bench/loader.py            # one torch thread per process
    python bench/loader.py --prepared data/prepared --workers 0 1 2 4
    python bench/loader.py --json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np
import simplejpeg
import torch
from prepare import make_videos, omni_prepare
from train_step import PEAK_BF16

from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.config import MODALITIES, model_sizes
from omnilatent.tasks import content_tokens
from pipeline.loader.batches import Batch
from pipeline.loader.shard_loader import ShardLoader, build_shard_loader
from pipeline.normalize import STORED_DTYPES, to_model_units
from pipeline.prepare.processes import usable_cpus
from pipeline.shards.decode import NO_PROBE_DECODER, decode_member
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


def loader_epoch(loader: ShardLoader) -> int:
    """One epoch of `loader`, as training runs it; returns its samples."""
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


def read_members(urls: list[str]) -> list[tuple[str, bytes]]:
    """Every member of every shard as (suffix, bytes), read into memory: the floor's input."""
    members = []
    for url in urls:
        with tarfile.open(url) as archive:
            for member in archive:
                handle = archive.extractfile(member)
                if handle is not None:
                    members.append((split_member_name(member.name)[1], handle.read()))
    return members


def floor_decode(suffix: str, data: bytes, probe: bool = True) -> None:
    """Decode one member alone, as a plain use of its library does: the mp4 opened by PyAV
    (its streams probed, which decodes the first frame with a decoder of the demuxer's own
    unless `probe` is False, as the loader opens clips: `decode.NO_PROBE_DECODER`), a decoder
    opened for the clip, its frames left in the decoder's YUV (no conversion to rgb24); the
    JPEG decoded by TurboJPEG (simplejpeg, the loader's decoder, cheaper than PIL's decode
    alone)."""
    kind = suffix.rsplit(".", 1)[-1]
    if kind == "mp4":
        with av.open(io.BytesIO(data), "r", format="mp4",
                     container_options=None if probe else NO_PROBE_DECODER) as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"
            stream.codec_context.thread_count = 1
            for _ in container.decode(stream):
                pass
    elif kind == "jpg":
        simplejpeg.decode_jpeg(data, colorspace="RGB")
    elif kind == "npy":
        np.load(io.BytesIO(data), allow_pickle=False)
    elif kind == "json":
        json.loads(data)
    else:
        data.decode("utf-8")


def floor_epoch(members: list[tuple[str, bytes]], samples: int, probe: bool = True) -> int:
    """The decode floor: every member decoded alone, in shard order; returns `samples`."""
    for suffix, data in members:
        floor_decode(suffix, data, probe)
    return samples


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads), of its children that have been waited for,
    and of its live children (DataLoader workers kept across epochs): every thread's run
    time in ``/proc/<pid>/task/<tid>/schedstat``, in nanoseconds."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0
    for listing in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        for pid in listing.read_text().split():
            for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
                try:
                    live += int(stat.read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    pass  # the thread or process has just exited
    return time.process_time() + children.ru_utime + children.ru_stime + live / 1e9


@dataclass(frozen=True)
class Cost:
    """One epoch's best wall and CPU seconds per sample (each the minimum over the repeats)."""

    wall_s: float
    cpu_s: float

    def as_dict(self) -> dict[str, float]:
        return {"samples_per_s": round(1 / self.wall_s, 1),
                "cpu_ms_per_sample": round(self.cpu_s * 1e3, 3),
                "samples_per_cpu_s": round(1 / self.cpu_s, 1),
                "cores": round(self.cpu_s / self.wall_s, 2)}


def timed(fn: Callable[[], int]) -> tuple[float, float]:
    """Wall and CPU seconds per sample of one run of `fn` (which returns its sample count)."""
    cpu, start = cpu_seconds(), time.perf_counter()
    samples = fn()
    return (time.perf_counter() - start) / samples, (cpu_seconds() - cpu) / samples


def interleaved(series: dict[str, Callable[[], int]], repeats: int) -> dict[str, Cost]:
    """Each series' best wall and CPU seconds per sample over `repeats` rounds, a round
    running every series once in turn: a change of load on the machine then touches every
    series alike, and loader/floor compares epochs run side by side, not minutes apart."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in series}
    for _ in range(repeats):
        for name, fn in series.items():
            runs[name].append(timed(fn))
    return {name: Cost(min(wall for wall, _ in found), min(cpu for _, cpu in found))
            for name, found in runs.items()}


def batch_bytes(batch: Batch) -> dict[str, int]:
    """Bytes of a batch's tensors as the loader sends them (I420 clips, uint8 pixels, float16
    mel), and as float32 model units."""
    stored = sum(value.nbytes for value in batch.values() if isinstance(value, torch.Tensor))
    units = sum(to_model_units(key, value).numel() * FLOAT32_BYTES if key in STORED_DTYPES
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
    tokens = {m: content_tokens(m, to_model_units(m, batch[m]), config.audio_stride,
                                config.patch_size, config.tubelet_size) / len(batch["__key__"])
              for m in MODALITIES}  # text: the batch's mean non-padding tokens
    held = [count for count in tokens.values() if count > 0]  # pairs the data can train
    per_sample = 2 * sum(held) / len(held)
    flops = 6 * params * per_sample
    return {"gpu": GPU, "peak_flops": PEAK_BF16[GPU], "mfu": MFU, "params": params,
            "tokens": tokens, "tokens_per_sample": per_sample, "flops_per_sample": flops,
            "samples_per_s": PEAK_BF16[GPU] * MFU / flops}


def measure(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Plain tar reading, the decode floor and the loader for each worker count, their epochs
    interleaved (`interleaved`), after a warm-up epoch of each that fills the page cache and
    starts a loader's workers. The loaders are kept across their epochs, as training keeps
    them: their workers' start-up, paid once per loader, is the first epoch's CPU less a
    steady one's."""
    urls = list(resolve_shards(folder).urls)
    samples = tar_epoch(urls)
    members = read_members(urls)
    loaders = {workers: build_shard_loader(folder, args.batch_size, num_workers=workers)
               for workers in args.workers}
    series: dict[str, Callable[[], int]] = {
        "tarfile": lambda: tar_epoch(urls), "floor": lambda: floor_epoch(members, samples),
        **({"unprobed": lambda: floor_epoch(members, samples, probe=False)}
           if any(suffix.endswith("mp4") for suffix, _ in members) else {}),
        **{str(w): partial(loader_epoch, loader) for w, loader in loaders.items()}}
    first = {name: timed(fn)[1] for name, fn in series.items()}  # warm-up
    costs = interleaved(series, args.repeats)
    floor = costs["floor"]
    unprobed = costs.get("unprobed")
    return {
        "shards": len(urls), "samples": samples,
        "bytes": sum(Path(url).stat().st_size for url in urls),
        "tarfile": costs["tarfile"].as_dict(),
        "floor": floor.as_dict(),
        "loader": {str(w): costs[str(w)].as_dict() for w in loaders},
        "loader_over_floor": {str(w): floor.cpu_s / costs[str(w)].cpu_s for w in loaders},
        **({} if unprobed is None else {
            "unprobed": unprobed.as_dict(),
            "loader_over_unprobed": {str(w): unprobed.cpu_s / costs[str(w)].cpu_s
                                     for w in loaders}}),
        "startup_cpu_ms": {str(w): round((first[str(w)] - costs[str(w)].cpu_s) * samples * 1e3,
                                         1) for w in loaders},
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
    shutil.rmtree(twin)
    return {
        "prepared": str(folder) if args.prepared is not None else None,
        "batch_size": args.batch_size, "cpus": usable_cpus(), "repeats": args.repeats,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "encodings": encodings,
        "batch_bytes": batch_bytes(batch),
        "first_batch_s": startup,
        "gpu": gpu,
        "cores_per_gpu": {name: {
            "loader": gpu["samples_per_s"] * min(c["cpu_ms_per_sample"]
                                                 for c in enc["loader"].values()) / 1e3,
            "floor": gpu["samples_per_s"] * enc["floor"]["cpu_ms_per_sample"] / 1e3}
            for name, enc in encodings.items()},
    }


def report(result: dict[str, Any]) -> None:
    first = result["encodings"]["mp4"]
    print(f"{first['samples']} samples in {first['shards']} shards, batch "
          f"{result['batch_size']}; {result['cpus']} CPUs; best of {result['repeats']} epochs; "
          f"load average {result['load_before'][0]:.2f} before, "
          f"{result['load_after'][0]:.2f} after")
    print(f"OMP_NUM_THREADS={result['omp_num_threads'] or '(unset)'}: torch uses "
          f"{result['torch_threads']} threads per process")
    header = f"  {'':<34}{'samples/s':>10}{'CPU ms/sample':>15}{'per CPU-s':>11}{'cores':>7}"
    for name, enc in result["encodings"].items():
        print(f"{name} clips ({enc['bytes'] / 1e6:.1f} MB):")
        print(header)
        rows = [("tarfile, every member read", enc["tarfile"]),
                ("decode floor, members alone", enc["floor"])]
        if "unprobed" in enc:
            rows.append(("  its clips opened unprobed", enc["unprobed"]))
        rows += [(f"loader, {w} workers", c) for w, c in enc["loader"].items()]
        for label, c in rows:
            print(f"  {label:<34}{c['samples_per_s']:10.1f}{c['cpu_ms_per_sample']:15.2f}"
                  f"{c['samples_per_cpu_s']:11.1f}{c['cores']:7.2f}")
        print("  loader/floor, samples per CPU-second: " + ", ".join(
            f"{w} workers {r:.2f}" for w, r in enc["loader_over_floor"].items()))
        if "unprobed" in enc:
            print("  loader/(floor, its clips opened unprobed as the loader opens them): "
                  + ", ".join(f"{w} workers {r:.2f}"
                              for w, r in enc["loader_over_unprobed"].items()))
        print("  workers' start-up, CPU ms once per loader (a run or a resume; the first "
              "epoch's CPU less a steady one's): " + ", ".join(
                  f"{w} workers {ms:.0f}" for w, ms in enc["startup_cpu_ms"].items()
                  if w != "0"))
    sizes = result["batch_bytes"]
    print(f"one batch's tensors, worker -> trainer -> device: {sizes['stored'] / 1e6:.2f} MB "
          f"(I420 or RGB uint8 clips, uint8 image, float16 mel) vs "
          f"{sizes['float32'] / 1e6:.2f} MB as float32 units "
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
    print(f"  CPU cores to feed it ({gpu['samples_per_s']:.0f} samples/s x CPU s per sample): "
          + "; ".join(f"{name} clips: loader {c['loader']:.1f} (its cheapest worker count), "
                      f"decode floor {c['floor']:.1f}"
                      for name, c in result["cores_per_gpu"].items()))


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
