"""One run per folder: an exclusive `fcntl.flock` on a lock file inside it.

`omni prepare` takes it on its output folder and `omni train` on its save dir, so a second run
into the same place stops at once with the first one's pid instead of interleaving files with
it. The kernel drops the lock when the holder's file descriptor closes, also when the process
is killed, so a crashed run never leaves a stale lock behind; the file itself stays (removing
it would let a third run lock a fresh inode while the second still holds the old one).

A shared lock lets several holders in at once and keeps exclusive ones out: the parts of an
`omni prepare --part I/N` job array share their output folder, which a whole run into it may
not."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from pipeline.errors import PipelineError

LOCK_NAME = ".omni.lock"
_PID_WIDTH = 11  # digits of the largest pid Linux allows (2**22) and more


class FolderInUseError(PipelineError):
    """Another process holds the folder's lock; the message names its pid and the folder."""


class FolderLock:
    """An exclusive (or, with `shared`, a shared) lock on `folder` (created if missing), held
    from `acquire` to `release`; also a context manager. Locks are per open file, so a second
    lock of the same folder fails in the same process too."""

    def __init__(self, folder: Path, shared: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        """Take the lock or raise FolderInUseError without waiting."""
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder is not None else "another process"
            raise FolderInUseError(f"another run ({who}) is using {self.folder}; wait for it to "
                                   f"end or choose another folder") from None
        except BaseException:
            os.close(fd)
            raise
        # One fixed-width record that every holder overwrites whole: with a shared lock the
        # file names one of the holders, never a mix of two pids' digits.
        os.pwrite(fd, f"{os.getpid():<{_PID_WIDTH}}\n".encode(), 0)
        os.ftruncate(fd, _PID_WIDTH + 1)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (closing the descriptor drops it); a no-op when not held."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    """The pid the holder wrote into the lock file, None if unreadable (it may be mid-write)."""
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
