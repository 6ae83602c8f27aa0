"""How the pipeline starts child processes: `omni prepare`'s video workers and `omni inspect
--verify`'s shard checkers.

Both fork them from a *forkserver* that imports the heavy modules they run (numpy, PyAV, PIL)
once, so that each child starts in milliseconds instead of importing them again; where
forkserver is unavailable (Windows), plain spawn. Never fork: the caller may run threads (a
progress bar, an encoder), which a fork would copy mid-work."""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.context import BaseContext


def process_context(preload: list[str]) -> BaseContext:
    """The start method for child processes, its forkserver importing the modules `preload`
    names before it forks the first one."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(preload)
        return context
    return multiprocessing.get_context("spawn")


def usable_cpus() -> int:
    """The CPUs this process may run on (the Slurm/cgroup affinity, not the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
