"""The folder lock: one run per output folder or save dir (issue 9, item 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.lock import LOCK_NAME, FolderInUseError, FolderLock

_HOLD = """
import sys, time
from pathlib import Path
from pipeline.lock import FolderLock
lock = FolderLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_second_lock_of_a_folder_fails_until_the_first_is_released(tmp_path: Path) -> None:
    first = FolderLock(tmp_path / "out").acquire()
    with pytest.raises(FolderInUseError, match=rf"another run \(pid {os.getpid()}\) is using"):
        FolderLock(tmp_path / "out").acquire()
    first.release()
    with FolderLock(tmp_path / "out") as again:
        assert again.held
    assert (tmp_path / "out" / LOCK_NAME).is_file()


def test_another_process_is_named_and_a_killed_holder_frees_the_folder(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUseError, match=rf"pid {holder.pid}\b.*{tmp_path}"):
            FolderLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the lock when the killed process's files close
        try:
            FolderLock(tmp_path).acquire().release()
            break
        except FolderInUseError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_shared_holders_keep_an_exclusive_one_out(tmp_path: Path) -> None:
    first = FolderLock(tmp_path, shared=True).acquire()
    second = FolderLock(tmp_path, shared=True).acquire()
    with pytest.raises(FolderInUseError, match=rf"pid {os.getpid()}"):
        FolderLock(tmp_path).acquire()
    first.release()
    second.release()
    with FolderLock(tmp_path), pytest.raises(FolderInUseError):
        FolderLock(tmp_path, shared=True).acquire()
