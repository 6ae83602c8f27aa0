"""How close `omni prepare` comes to the decode limit, and how it scales with workers.

On a set of generated H.264 videos (720p, 30 fps, AAC audio) it times, in the same run:

(a) the decode limit: ``ffmpeg -i F -vf fps=8,scale=112:112 -f null -`` over every file, one
    process per file, one after the other (ffmpeg's default threading; the same with
    ``-threads 1`` is printed too, and the cores ffmpeg used, to tell decode from threading);
(b) ``omni prepare --workers 1`` on the folder, as a CLI subprocess;
(c) ``omni prepare --workers 2`` likewise;
(s) the fixed start-up cost: ``omni prepare --workers 1`` on a folder with one 3 s video
    (starting the CLI, the forkserver that imports torch, one worker; writing the manifest).

and prints the ratio (b)/(a) (target <= 1.3) and the speed-up (b)/(c) (target >= 1.7 on two
cores), each with PASS/FAIL, and the same figures with (s) taken off (b) and (c), i.e. for the
per-video work alone. Every measurement is the fastest of `--repeats` rounds; the rounds
interleave (a), (s), (b) and (c), so a burst of load from other jobs on a shared machine hits
all of them alike, and the fastest run is the one it disturbed least. The load average before
and after is printed with the figures.

Content: ffmpeg's ``testsrc2`` (moving patterns, scrolling colour bars, a running clock), its
hue turned per video, plus temporal noise of strength 6 so that no two frames are alike, at a
bitrate of 4 Mb/s (x264 "veryfast", B-frames, 2 s GOP) like downloaded footage; stereo AAC at
48 kHz of a warbling tone over noise. Generating takes about as long as the videos last. The
default is an even number of equal videos, so that two workers finish together: with an odd
count the last video runs alone, which measures the tail of a run rather than the scaling.

    python bench/prepare.py                           # 4 videos of 20 s in a temporary folder
    python bench/prepare.py --video-dir /tmp/bench-videos --repeats 5   # keep and reuse them
    python bench/prepare.py --json > prepare-bench.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.ffmpeg_bin import ffmpeg_binary
from pipeline.prepare import default_workers

RATIO_TARGET = 1.3  # omni prepare --workers 1 over the ffmpeg decode, at most
SPEEDUP_TARGET = 1.7  # --workers 1 over --workers 2, at least
PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>
_QUIET = ["-nostdin", "-hide_banner", "-loglevel", "error"]


def video_name(index: int, duration: float) -> str:
    return f"bench-{index:02d}-720p30-{duration:g}s.mp4"


def make_video(path: Path, index: int, duration: float, size: str = "1280x720",
               fps: int = 30) -> None:
    """One benchmark video (see the module docstring), written under a temporary name first so
    that an interrupted generation never leaves a short file to be reused."""
    video = (f"testsrc2=size={size}:rate={fps}:duration={duration},"
             f"hue=h={index * 67 % 360},noise=alls=6:allf=t")
    tone = 220 * (index + 2)
    audio = (f"aevalsrc=0.3*sin(2*PI*{tone}*t+2*sin(2*PI*3*t))+0.03*(random(0)-0.5)|"
             f"0.3*sin(2*PI*{tone * 1.5}*t)+0.03*(random(1)-0.5):s=48000:d={duration}")
    part = path.with_name(path.stem + ".part.mp4")
    command = [
        ffmpeg_binary(), *_QUIET, "-y", "-f", "lavfi", "-i", video, "-f", "lavfi", "-i", audio,
        "-c:v", "libx264", "-preset", "veryfast", "-b:v", "4M", "-maxrate", "6M",
        "-bufsize", "8M", "-g", str(2 * fps), "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "128k", "-shortest", str(part),
    ]  # fmt: skip
    subprocess.run(command, check=True)
    part.rename(path)


def make_videos(folder: Path, count: int, duration: float) -> list[Path]:
    """The benchmark videos in `folder`, generating only those that are not there yet."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / video_name(index, duration)
        if not path.exists():
            make_video(path, index, duration)
        paths.append(path)
    return paths


def omni_command() -> list[str]:
    """The `omni` entry point of the running interpreter's environment."""
    script = Path(sys.executable).with_name("omni")
    if script.exists():
        return [str(script)]
    found = shutil.which("omni")
    if found is None:
        raise SystemExit("omni is not installed: run `make install` first")
    return [found]


def ffmpeg_decode(paths: list[Path], threads: int | None = None) -> None:
    """(a): the decode limit, one ffmpeg process per file, in turn (`threads`: -threads N)."""
    option = [] if threads is None else ["-threads", str(threads)]
    for path in paths:
        subprocess.run([ffmpeg_binary(), *_QUIET, *option, "-i", str(path),
                        "-vf", "fps=8,scale=112:112", "-f", "null", "-"], check=True)


def omni_prepare(video_dir: Path, out_dir: Path, workers: int,
                 extra: list[str]) -> dict[str, Any]:
    """Run `omni prepare --json` into a fresh `out_dir`; return its summary."""
    shutil.rmtree(out_dir, ignore_errors=True)
    command = [*omni_command(), "prepare", str(video_dir), str(out_dir),
               "--workers", str(workers), "--json", *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited with {done.returncode}:\n"
                         f"{done.stdout}{done.stderr}")
    return json.loads(done.stdout)


def adopt_orphans() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux only).

    `omni prepare`'s workers are children of its forkserver, which outlives `omni` for a
    moment and which nobody waits for; adopted and waited for here, their CPU time reaches
    RUSAGE_CHILDREN. Returns False where that is not possible (CPU figures then miss them).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of every process `fn` started, orphans included).

    CPU time hardly depends on other jobs competing for the cores, so on a shared machine it
    tells whether a change made the work cheaper when wall times are too noisy to.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    while True:  # reap the adopted forkserver (see adopt_orphans)
        try:
            os.wait()
        except ChildProcessError:
            break
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    video_dir = args.video_dir if args.video_dir is not None else work / "videos"
    started = time.perf_counter()
    paths = make_videos(video_dir, args.videos, args.duration)
    generated_s = time.perf_counter() - started
    # `omni prepare` gets a folder of links to exactly these videos: --video-dir may hold
    # others (another --videos or --duration), which ffmpeg would not see.
    set_dir = work / "set"
    set_dir.mkdir()
    for path in paths:
        (set_dir / path.name).symlink_to(path.resolve())
    tiny_dir = work / "tiny"
    tiny_dir.mkdir()
    make_video(tiny_dir / "tiny.mp4", 0, 3.0, size="320x240")
    extra = ["--decoder", args.decoder]
    out = work / "out"

    runs: dict[str, Callable[[], object]] = {
        "ffmpeg": lambda: ffmpeg_decode(paths),
        "ffmpeg_1_thread": lambda: ffmpeg_decode(paths, threads=1),
        "startup": lambda: omni_prepare(tiny_dir, out, 1, extra),
    }
    summary: dict[str, Any] = {}
    for workers in args.workers:
        runs[f"workers_{workers}"] = (
            lambda w=workers: summary.update(omni_prepare(set_dir, out, w, extra)))
    cpu_complete = adopt_orphans()
    load_before = os.getloadavg()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(measure(fn))
    load_after = os.getloadavg()

    best = {name: min(values) for name, values in times.items()}  # fastest wall time
    totals = summary["totals"]
    result: dict[str, Any] = {
        "videos": len(paths), "video_seconds": args.duration, "decoder": args.decoder,
        "cpus": default_workers(), "repeats": args.repeats,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "generated_s": round(generated_s, 1), "clips": totals["clips"],
        "shard_bytes": totals["bytes"],
        "times_s": {name: [round(wall, 3) for wall, _ in values]
                    for name, values in times.items()},
        "best_s": {name: round(wall, 3) for name, (wall, _) in best.items()},
        "cpu_s": {name: round(min(cpu for _, cpu in values), 3)
                  for name, values in times.items()},
        "cpu_complete": cpu_complete,
    }
    decode = best["ffmpeg"][0]
    fixed = best["startup"][0]
    one = best["workers_1"][0] if "workers_1" in best else None
    two = best["workers_2"][0] if "workers_2" in best else None
    if one is not None:
        result["ratio"] = one / decode
        result["ratio_without_startup"] = (one - fixed) / decode
        result["ratio_pass"] = result["ratio"] <= RATIO_TARGET
    if one is not None and two is not None:
        result["speedup"] = one / two
        result["speedup_without_startup"] = (one - fixed) / (two - fixed)
        result["speedup_pass"] = result["speedup"] >= SPEEDUP_TARGET
    return result


def report(result: dict[str, Any]) -> None:
    best, cpu = result["best_s"], result["cpu_s"]
    footage = result["videos"] * result["video_seconds"]
    print(f"{result['videos']} videos x {result['video_seconds']:g} s (720p30 H.264 + AAC), "
          f"{result['clips']} clips, {result['shard_bytes'] / 1e6:.1f} MB of shards; decoder "
          f"{result['decoder']}; {result['cpus']} CPUs; best of {result['repeats']}; load "
          f"average {result['load_before'][0]:.2f} before, {result['load_after'][0]:.2f} after")
    rows = [("(a) ffmpeg -vf fps=8,scale=112:112 -f null", "ffmpeg"),
            ("    the same with -threads 1", "ffmpeg_1_thread")]
    rows += [(f"(b/c) omni prepare --workers {name.removeprefix('workers_')}", name)
             for name in best if name.startswith("workers_")]
    rows.append(("(s) start-up: omni prepare of one 3 s video", "startup"))
    print(f"  {'':<44} {'wall s':>7} {'CPU s':>7} {'cores':>6} {'footage-s/s':>12}")
    for label, name in rows:
        rate = f"{footage / best[name]:12.1f}" if name != "startup" else ""
        print(f"  {label:<44} {best[name]:7.2f} {cpu[name]:7.2f} {cpu[name] / best[name]:6.2f} "
              f"{rate}")
    if not result["cpu_complete"]:
        print("  (CPU of prepare's workers not counted: no subreaper on this system)")
    if "ratio" in result:
        print(f"ratio    prepare -w1 / ffmpeg  = {result['ratio']:.2f}  (target <= "
              f"{RATIO_TARGET})  {verdict(result['ratio_pass'])};  without start-up "
              f"{result['ratio_without_startup']:.2f}")
    if "speedup" in result:
        print(f"speed-up prepare -w1 / -w2     = {result['speedup']:.2f}  (target >= "
              f"{SPEEDUP_TARGET})  {verdict(result['speedup_pass'])};  without start-up "
              f"{result['speedup_without_startup']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video-dir", type=Path, default=None,
                        help="where the videos are generated, or reused if already there "
                             "(default: a temporary folder)")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per video")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best one counts")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--decoder", choices=["pyav", "ffmpeg"], default="pyav")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="omni-bench-prepare-") as tmp:
        result = run(args, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    main()
