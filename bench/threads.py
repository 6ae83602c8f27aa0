"""The CPU thread policy on a quiet and on a loaded machine (issue 20 §1).

Times three short commands (a 20-step tiny `omni train` on the curriculum, `omni eval` of its
checkpoint, `omni demo`) under three settings, round robin so a drift in the machine's speed
touches all alike:

- `default`: no option, the policy of `omnilatent/threads.py`;
- `--threads 1`;
- `--threads N` with N the usable cores: what every command did before the policy.

`--load loaded` runs two busy loops beside each command (the loaded machine); `quiet` runs
none. Prints wall and CPU seconds (the command's whole process tree, `RUSAGE_CHILDREN`),
medians over `--repeats`, and the ratios the targets name: default / best setting (loaded:
target <= 1.3) and default / all cores (quiet: target <= 1.1).

    python bench/threads.py --load quiet --repeats 3
    python bench/threads.py --load loaded --repeats 3
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OMNI = [sys.executable, "-c", "from cli.app import main; main()"]
TINY = ["--dim", "128", "--layers", "4", "--heads", "4", "--batch-size", "8", "--device", "cpu"]


def _run(args: list[str]) -> tuple[float, float]:
    """(wall, cpu) seconds of one command, its children included."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", choices=("quiet", "loaded"), default="quiet")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from pipeline.prepare.processes import usable_cpus

    cores = usable_cpus()
    settings = {"default": [], "--threads 1": ["--threads", "1"],
                f"--threads {cores} (before)": ["--threads", str(cores)]}
    work = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    try:
        subprocess.run([*OMNI, "demo-videos", str(work / "videos"), "--count", "16"],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*OMNI, "prepare", str(work / "videos"), str(work / "shards"),
                        "--eval-fraction", "0.25"], check=True, stdout=subprocess.DEVNULL)
        train = [*OMNI, "train", "--shards", str(work / "shards"), "--phase-schedule",
                 "default", "--steps", "20", *TINY]
        subprocess.run([*train, "--save-dir", str(work / "trained")], check=True,
                       stdout=subprocess.DEVNULL)
        commands = {
            "train": lambda extra: [*train, "--save-dir", str(work / "run"), *extra],
            "eval": lambda extra: [*OMNI, "eval", str(work / "trained"), str(work / "shards"),
                                   "--device", "cpu", *extra],
            "demo": lambda extra: [*OMNI, "demo", *extra],
        }
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(2 if args.load == "loaded" else 0)]
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        try:
            for _ in range(args.repeats):
                for name, command in commands.items():
                    for setting, extra in settings.items():
                        shutil.rmtree(work / "run", ignore_errors=True)
                        times.setdefault((name, setting), []).append(_run(command(extra)))
        finally:
            for process in busy:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.load} machine, {cores} usable cores, medians of {args.repeats} runs")
    print(f"{'command':8} {'setting':22} {'wall s':>7} {'cpu s':>7} {'/best':>6} {'/before':>8}")
    for name in commands:
        wall = {s: statistics.median(w for w, _ in times[(name, s)]) for s in settings}
        cpu = {s: statistics.median(c for _, c in times[(name, s)]) for s in settings}
        best, before = min(wall.values()), wall[f"--threads {cores} (before)"]
        for setting in settings:
            print(f"{name:8} {setting:22} {wall[setting]:7.1f} {cpu[setting]:7.1f} "
                  f"{wall[setting] / best:6.2f} {wall[setting] / before:8.2f}")


if __name__ == "__main__":
    main()
