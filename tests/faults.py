"""Test-only faults in `omni prepare`'s workers, so tests prove their isolation with real
crashes, hangs, exceptions and memory hogs.

conftest.py adds this module to the workers' forkserver preload (`pipeline.prepare.worker`);
every worker forked from that server has `video_context` wrapped, so that right after probing,
the job of a video whose file name starts with ``fault_crash`` kills its process with SIGSEGV,
``fault_hang`` sleeps forever, ``fault_raise`` raises, and ``fault_memory`` reserves twice the
address space the worker may (never touched, so it costs nothing without the limit). Jobs run
in the test process itself (`prepare_video` called directly) are left as they are.
"""

from __future__ import annotations

import functools
import os
import resource
import signal
import time
from typing import Any

import numpy as np

from pipeline.prepare import sample


def _inject(name: str) -> None:
    if name.startswith("fault_crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    elif name.startswith("fault_hang"):
        while True:
            time.sleep(3600)
    elif name.startswith("fault_raise"):
        raise RuntimeError("fault injected by tests/faults.py")
    elif name.startswith("fault_memory"):
        np.empty(2 * resource.getrlimit(resource.RLIMIT_AS)[0], dtype=np.uint8)


def _with_faults(video_context: Any) -> Any:
    @functools.wraps(video_context)
    def wrapped(source: Any, *args: Any, **kwargs: Any) -> Any:
        probed = video_context(source, *args, **kwargs)
        _inject(source.path.name)
        return probed

    return wrapped


sample.video_context = _with_faults(sample.video_context)
