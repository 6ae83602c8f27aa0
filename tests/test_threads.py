"""The CPU thread policy: the cores nothing else runs on, unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from omnilatent.threads import choose_threads, others_running
from pipeline.prepare.processes import usable_cpus


def test_a_quiet_machine_keeps_every_core() -> None:
    assert choose_threads(environ={}, cores=8, busy=0.0).threads == 8


def test_a_busy_machine_leaves_the_others_their_cores() -> None:
    assert choose_threads(environ={}, cores=2, busy=2.0).threads == 1
    assert choose_threads(environ={}, cores=8, busy=3.0).threads == 5
    assert choose_threads(environ={}, cores=4, busy=40.0).threads == 1


def test_the_user_chooses_first() -> None:
    assert choose_threads(3, environ={"OMP_NUM_THREADS": "1"}, cores=2, busy=2.0).threads == 3
    chosen = choose_threads(environ={"OMP_NUM_THREADS": "1"}, cores=8, busy=0.0)
    assert (chosen.threads, chosen.reason) == (1, "OMP_NUM_THREADS")


def test_unreadable_or_odd_environment_falls_back_to_the_load() -> None:
    assert choose_threads(environ={"OMP_NUM_THREADS": "x"}, cores=4, busy=1.0).threads == 3
    assert choose_threads(environ={"OMP_NUM_THREADS": "0"}, cores=4, busy=0.0).threads == 4


def test_the_running_count_excludes_this_process(tmp_path: Path) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("2.10 1.50 0.90 3/412 12345\n")
    assert others_running(loadavg) == 2
    loadavg.write_text("0.00 0.00 0.00 1/90 1\n")
    assert others_running(loadavg) == 0
    assert others_running(tmp_path / "missing") is None


def test_busy_loops_beside_a_command_give_it_one_thread() -> None:
    """Two spinning processes on this machine's cores: the policy sees them."""
    if not Path("/proc/loadavg").exists():
        return
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.5)  # both running
        cores = usable_cpus()
        chosen = choose_threads(environ={}, cores=cores)
        assert chosen.threads <= max(1, cores - 2)
    finally:
        for process in spin:
            process.kill()
            process.wait()


def test_the_cli_applies_the_choice_to_torch() -> None:
    code = ("import torch; from omnilatent.threads import configure_threads; "
            "c = configure_threads(2); print(c.threads, torch.get_num_threads())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.stdout.split() == ["2", "2"]
