"""How close `omni prepare` comes to the decode limit, and how it scales with workers.

On a set of generated H.264 videos (720p, 30 fps, AAC audio) it times, in the same run:

(a) the decode limit: ``ffmpeg -i F -vf fps=8,scale=112:112 -f null -`` over every file, one
    process per file, one after the other (ffmpeg's default threading; the same with
    ``-threads 1`` is printed too, and the cores ffmpeg used, to tell decode from threading);
(b) ``omni prepare --workers 1`` on the folder, as a CLI subprocess (default threads: a lone
    worker decodes on every core);
(d) ``omni prepare`` at the default worker count (one per CPU);
(c1, c2) ``omni prepare --workers 1`` and ``--workers 2``, both with ``--decoder-threads 1``,
    which runs each worker on one thread (the encoding in line): the per-worker scaling,
    which a lone worker's frame threads and encoding thread would otherwise hide;
(s) the fixed start-up cost: ``omni prepare --workers 1`` on a folder with one 3 s video
    (starting the CLI, the forkserver, one worker; writing the manifest).

and prints with PASS/FAIL the ratios (b)/(a) (target <= 1.3) and (d)/(a) (target <= 1.0) of
wall times, with the same ratios of CPU seconds beside them (every process of each run,
workers included: the figure a busy machine hardly moves), the speed-up (c1)/(c2) (target
>= 1.7) and (s) (target <= 1.0 s), and the ratios with (s) taken off, i.e. for the per-video
work alone. Every measurement is the fastest of `--repeats` rounds; the rounds interleave the
runs, so a burst of load from other jobs on a shared machine hits all of them alike, and the
fastest run is the one it disturbed least. The load average
before and after is printed with the figures.

Memory: while each `omni prepare` runs, /proc is sampled every `MEMORY_INTERVAL_S` for the
whole process tree (the CLI, the forkserver and the workers, ffmpeg children included; `time
-v` sees only the parent), and the peak of the summed PSS (shared pages split among the
processes that share them, so a page the forkserver shares with its forks counts once) and of
the summed RSS (shared pages counted in every process: an upper bound) is reported per run.

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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.media.ffmpeg_bin import ffmpeg_binary
from pipeline.prepare.processes import usable_cpus

RATIO_TARGET = 1.3  # omni prepare --workers 1 over the ffmpeg decode, at most
DEFAULT_RATIO_TARGET = 1.0  # omni prepare at the default worker count over it, at most
SPEEDUP_TARGET = 1.7  # --workers 1 over --workers 2, one decoder thread each, at least
STARTUP_TARGET_S = 1.0  # omni prepare of one 3 s video, the whole command, at most
MEMORY_INTERVAL_S = 0.1
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


def _tree(root: int) -> list[int]:
    """`root` and its descendants now, from the parent pids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # exited meanwhile
            parent = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces
            children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB; (0, 0) once it has exited."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    values = {line.split(":")[0]: int(line.split()[1]) for line in rollup.splitlines()[1:]}
    return values.get("Pss", 0), values.get("Rss", 0)


class TreeMemory:
    """Peak summed PSS and RSS of a process tree, sampled from /proc in a thread."""

    def __init__(self, root: int) -> None:
        self.peak_pss_kb = self.peak_rss_kb = 0
        self._root = root
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(MEMORY_INTERVAL_S):
            pss = rss = 0
            for pid in _tree(self._root):
                one_pss, one_rss = _memory_kb(pid)
                pss, rss = pss + one_pss, rss + one_rss
            self.peak_pss_kb = max(self.peak_pss_kb, pss)
            self.peak_rss_kb = max(self.peak_rss_kb, rss)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def omni_prepare(video_dir: Path, out_dir: Path, options: list[str],
                 memory: dict[str, int]) -> dict[str, Any]:
    """Run `omni prepare --json OPTIONS` into a fresh `out_dir`; return its summary. Raises
    `memory`'s "pss_kb" and "rss_kb" to the peaks of its process tree (where /proc exists)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    command = [*omni_command(), "prepare", str(video_dir), str(out_dir), "--json", *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    sampler = TreeMemory(process.pid) if os.path.isdir("/proc") else None
    stdout, stderr = process.communicate()
    if sampler is not None:
        sampler.stop()
        memory["pss_kb"] = max(memory.get("pss_kb", 0), sampler.peak_pss_kb)
        memory["rss_kb"] = max(memory.get("rss_kb", 0), sampler.peak_rss_kb)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited with {process.returncode}:\n"
                         f"{stdout}{stderr}")
    return json.loads(stdout)


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
    extra = ["--decoder", args.decoder, "--follow-symlinks"]  # the set is links to the videos
    out = work / "out"

    options = {
        "startup": (tiny_dir, ["--workers", "1"]),
        "workers_1": (set_dir, ["--workers", "1"]),
        "workers_default": (set_dir, []),
        "workers_1_thread_1": (set_dir, ["--workers", "1", "--decoder-threads", "1"]),
        "workers_2_thread_1": (set_dir, ["--workers", "2", "--decoder-threads", "1"]),
    }
    runs: dict[str, Callable[[], object]] = {
        "ffmpeg": lambda: ffmpeg_decode(paths),
        "ffmpeg_1_thread": lambda: ffmpeg_decode(paths, threads=1),
    }
    summary: dict[str, Any] = {}
    memory: dict[str, dict[str, int]] = {name: {} for name in options}
    for name, (folder, more) in options.items():
        runs[name] = lambda name=name, folder=folder, more=more: summary.update(
            omni_prepare(folder, out, [*more, *extra], memory[name]))
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
        "cpus": usable_cpus(), "repeats": args.repeats,
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
        "peak_pss_mb": {name: round(peak.get("pss_kb", 0) / 1024, 1)
                        for name, peak in memory.items()},
        "peak_rss_mb": {name: round(peak.get("rss_kb", 0) / 1024, 1)
                        for name, peak in memory.items()},
    }
    decode = best["ffmpeg"][0]
    fixed = best["startup"][0]
    one, default = best["workers_1"][0], best["workers_default"][0]
    one_thread, two_threads = best["workers_1_thread_1"][0], best["workers_2_thread_1"][0]
    result.update(
        ratio=one / decode, ratio_without_startup=(one - fixed) / decode,
        ratio_pass=one / decode <= RATIO_TARGET,
        default_ratio=default / decode, default_ratio_without_startup=(default - fixed) / decode,
        default_ratio_pass=default / decode <= DEFAULT_RATIO_TARGET,
        speedup=one_thread / two_threads,
        speedup_without_startup=(one_thread - fixed) / (two_threads - fixed),
        speedup_pass=one_thread / two_threads >= SPEEDUP_TARGET,
        speedup_default_threads=one / best["workers_default"][0],
        startup_pass=fixed <= STARTUP_TARGET_S,
    )
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
    rows += [("(b) omni prepare --workers 1", "workers_1"),
             (f"(d) omni prepare (default: {result['cpus']} workers)", "workers_default"),
             ("(c1) omni prepare -w 1 --decoder-threads 1", "workers_1_thread_1"),
             ("(c2) omni prepare -w 2 --decoder-threads 1", "workers_2_thread_1"),
             ("(s) start-up: omni prepare of one 3 s video", "startup")]
    pss, rss = result["peak_pss_mb"], result["peak_rss_mb"]
    print(f"  {'':<44} {'wall s':>7} {'CPU s':>7} {'cores':>6} {'footage-s/s':>12} "
          f"{'PSS MB':>7} {'RSS MB':>7}")
    for label, name in rows:
        rate = f"{footage / best[name]:12.1f}" if name != "startup" else " " * 12
        peaks = f" {pss[name]:7.0f} {rss[name]:7.0f}" if name in pss else ""
        print(f"  {label:<44} {best[name]:7.2f} {cpu[name]:7.2f} {cpu[name] / best[name]:6.2f} "
              f"{rate}{peaks}")
    if not result["cpu_complete"]:
        print("  (CPU of prepare's workers not counted: no subreaper on this system)")
    print(f"ratio    (b) -w1 / ffmpeg          = {result['ratio']:.2f}  (target <= "
          f"{RATIO_TARGET})  {verdict(result['ratio_pass'])};  without start-up "
          f"{result['ratio_without_startup']:.2f};  in CPU seconds "
          f"{cpu['workers_1'] / cpu['ffmpeg']:.2f}")
    print(f"ratio    (d) default / ffmpeg      = {result['default_ratio']:.2f}  (target <= "
          f"{DEFAULT_RATIO_TARGET})  {verdict(result['default_ratio_pass'])};  without "
          f"start-up {result['default_ratio_without_startup']:.2f};  in CPU seconds "
          f"{cpu['workers_default'] / cpu['ffmpeg']:.2f}")
    print(f"speed-up (c1) / (c2), 1 thread each = {result['speedup']:.2f}  (target >= "
          f"{SPEEDUP_TARGET})  {verdict(result['speedup_pass'])};  without start-up "
          f"{result['speedup_without_startup']:.2f}; default threads (b) / (d) "
          f"{result['speedup_default_threads']:.2f}")
    print(f"start-up (s)                      = {best['startup']:.2f} s  (target <= "
          f"{STARTUP_TARGET_S} s)  {verdict(result['startup_pass'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video-dir", type=Path, default=None,
                        help="where the videos are generated, or reused if already there "
                             "(default: a temporary folder)")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per video")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best one counts")
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
