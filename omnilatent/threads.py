"""How many CPU threads torch computes with: the cores nothing else is running on.

torch's OpenMP threads spin while they wait for each other. On a machine whose cores are all
busy (a laptop with a browser, a CI runner, a shared server) a spinning thread takes the time
slice its partner needs, and a 2-thread step ran 10-25x slower than a 1-thread one (README,
"CPU threads"). So the default is the cores this process may use less the tasks already
running on them, sampled when the command starts, at least one; `--threads N` or
`OMP_NUM_THREADS` (torchrun sets it to 1) choose for themselves. A run on a quiet machine
keeps every core, as before.

This module imports nothing heavy: the choice is made before torch computes anything."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.prepare.processes import usable_cpus

LOADAVG = Path("/proc/loadavg")
SAMPLES, SAMPLE_GAP_S = 5, 0.01


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a command computes with, and why (shown in its set-up line)."""

    threads: int
    reason: str


def others_running(loadavg: Path = LOADAVG) -> float | None:
    """Tasks running or ready to run besides this one: the median of a few samples of the
    kernel's instantaneous count (a 1-minute load average lags a load that just started or
    stopped), or None where the OS does not publish it."""
    counts = []
    for i in range(SAMPLES):
        try:
            running = loadavg.read_text().split()[3].split("/")[0]
        except (OSError, IndexError):
            return None
        counts.append(int(running) - 1)  # this process is running while it reads
        if i + 1 < SAMPLES:
            time.sleep(SAMPLE_GAP_S)
    return max(0.0, statistics.median(counts))


def choose_threads(requested: int | None = None, environ: dict[str, str] | None = None,
                   cores: int | None = None, busy: float | None = None) -> ThreadChoice:
    """The thread count for this command: `requested` (``--threads``), else
    ``OMP_NUM_THREADS``, else the usable cores less the tasks already running on them."""
    environ = os.environ if environ is None else environ
    if requested is not None:
        return ThreadChoice(requested, "--threads")
    fixed = environ.get("OMP_NUM_THREADS", "").strip()
    if fixed.isdigit() and int(fixed) > 0:
        return ThreadChoice(int(fixed), "OMP_NUM_THREADS")
    cores = usable_cpus() if cores is None else cores
    busy = others_running() if busy is None else busy
    if busy is None:
        return ThreadChoice(cores, f"{cores} cores")
    free = max(1, min(cores, round(cores - busy)))
    others = f"{busy:g} other task" + ("" if busy == 1 else "s")
    return ThreadChoice(free, f"{cores} cores, {others} running")


def configure_threads(requested: int | None = None) -> ThreadChoice:
    """Choose the thread count (`choose_threads`) and make torch, and the OpenMP and MKL pools
    under it, compute with it."""
    import torch

    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    return choice
