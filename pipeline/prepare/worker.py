"""Run each video's job (`pipeline.prepare.video_job`) in its own process, under a time limit, so a
bad file fails alone.

**One process per video.** A decoder that segfaults, hangs in C code or leaks takes only its
own process down; the parent sees the exit (signal name for a crash) or the deadline pass,
kills the process group, records the reason and goes on. A pool that reuses processes would
either die with the first crash (`ProcessPoolExecutor` breaks every pending future) or need
the same bookkeeping. Processes come from a *forkserver* (`pipeline.prepare.processes`) that has
imported the decoder, the sample code and the schema once, so starting one costs a fork
(milliseconds), not an interpreter start. Each worker leads its own process group (so a kill
also reaches the ffmpeg processes of the ffmpeg backend), ignores Ctrl-C (the parent stops
it), and exits within a second if the parent is killed outright.

The time limit (`time_limit`) and the memory limit (`video_job.memory_limit`, as RLIMIT_AS)
are stated in README.md, "Isolation" and "Frame size and memory". Decoded footage extends the
time limit without bound, being real work done; the stated duration is a header field anyone
can patch, so it counts only up to what the file's size can hold."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.prepare.processes import process_context
from pipeline.prepare.video_job import VideoTask, memory_limit, prepare_video
from pipeline.shards.outcome import FAILED, OutputError, VideoOutcome

# How long a worker that reported its outcome may take to exit before it is killed.
EXIT_GRACE_S = 5.0
# How often an orphaned worker checks that the process that started it is still alive.
PARENT_CHECK_S = 1.0
# The stated duration counts for the time limit up to the file's size at this rate (32 kbit/s,
# below any video whose decoding is slow), and never past MAX_STATED_S: beyond that, decoded
# footage must carry a video, at 1/timeout_factor of real time or faster.
MIN_BYTES_PER_SECOND = 4000
MAX_STATED_S = 4 * 3600.0
# Set for worker processes (and the forkserver they fork from) when it starts them. numpy's
# BLAS reads these when it loads: unset, OpenBLAS starts a thread per core in every worker, and
# the mel projection ((T, F) @ (F, M), once per window) measured 0.7 ms with 2 threads spinning
# against the other workers and the decoder, 0.09 ms with one.
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class RunningVideo:
    """A snapshot of a video being prepared, for progress displays."""

    source: str
    clips: int
    decoded_seconds: float
    duration_hint: float | None


def _watch_parent(parent_pid: int) -> None:
    """Exit when the process that started this worker is gone (killed with -9, say), so an
    orphan does not decode on, or sleep forever in a hang, after its run has ended."""
    while True:
        time.sleep(PARENT_CHECK_S)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass  # alive, owned by someone else (cannot happen for our parent, but harmless)


def _limit_memory(limit: int) -> None:
    """Bound this process's address space (and its children's) at `limit` bytes, or at the
    hard limit if that is lower. Windows has no such limit: there, nothing is bounded."""
    try:
        import resource
    except ImportError:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _worker_main(task: VideoTask, conn: Connection, parent_pid: int) -> None:
    """Entry point of a worker process: prepare one video, report, exit without teardown."""
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)  # own process group: a timeout kills ffmpeg children too
    _limit_memory(memory_limit(task.threads))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    try:
        outcome = prepare_video(task, conn.send)
        conn.send(("done", outcome))
    except OutputError as err:
        conn.send(("output_error", str(err)))
    except BrokenPipeError:
        os._exit(1)  # the parent is gone
    conn.close()
    # Skip interpreter teardown (PyAV, threads): the outcome is sent and the part file closed.
    os._exit(0)


# Imported once by the forkserver so that each forked worker starts with them loaded (the
# decode backends are otherwise imported lazily, on a video's first probe; `pipeline.prepare.sample`
# on its first sample).
PRELOAD = [__name__, "pipeline.media.decode_pyav", "pipeline.media.decode_ffmpeg",
            "pipeline.prepare.sample"]


def _context() -> BaseContext:
    return process_context(PRELOAD)


def start_forkserver() -> None:
    """Start the forkserver that workers are forked from, if not running, and return at once.

    It imports `PRELOAD` (numpy, PyAV, PIL, the sample code: ~0.5 s) in its own process, so a
    caller that starts it before its own work (importing the CLI, discovery, planning) overlaps
    the two instead of waiting for it at the first `VideoRunner.start`. Where forkserver is
    unavailable this does nothing: spawned workers have no server to start."""
    if _context().get_start_method() == "forkserver":
        from multiprocessing import forkserver  # POSIX only

        with _environment(WORKER_ENV):
            forkserver.ensure_running()


@dataclass
class _Job:
    task: VideoTask
    process: BaseProcess
    conn: Connection
    started: float
    duration_hint: float | None = None
    clips: int = 0
    decoded: float = 0.0
    outcome: VideoOutcome | None = None
    output_error: str | None = None
    eof: bool = False
    file_bytes: int = 0  # bounds how far the stated duration is believed (`time_limit`)

    def limit(self, factor: float, minimum: float) -> float:
        return time_limit(self.duration_hint, self.decoded, self.file_bytes, factor, minimum)


def time_limit(stated: float | None, decoded: float, file_bytes: int, factor: float,
               minimum: float) -> float:
    """Seconds a video's worker may run: `max(minimum, factor * D)`, D the larger of the
    footage decoded so far and the `stated` duration, the latter believed only up to
    `file_bytes / MIN_BYTES_PER_SECOND` and MAX_STATED_S (see the module docstring)."""
    credible = min(stated or 0.0, file_bytes / MIN_BYTES_PER_SECOND, MAX_STATED_S)
    return max(minimum, factor * max(credible, decoded))


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # the worker reports why it cannot read the file


def _signal_name(exitcode: int) -> str:
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


class VideoRunner(contextlib.AbstractContextManager["VideoRunner"]):
    """Runs up to `workers` videos at once, each in its own process with a time limit.

    `start` a task when `free` is positive; `wait` returns the outcomes of videos that
    finished (successfully or not). Always `close` it (or use it as a context manager): every
    worker still running is killed."""

    def __init__(self, workers: int, timeout_factor: float, timeout_min_s: float) -> None:
        if workers < 1:
            raise PipelineError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.timeout_factor = timeout_factor
        self.timeout_min_s = timeout_min_s
        self._context = _context()
        self._jobs: list[_Job] = []

    @property
    def free(self) -> int:
        return self.workers - len(self._jobs)

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    def running(self) -> list[RunningVideo]:
        return [RunningVideo(job.task.source.rel_path, job.clips, job.decoded, job.duration_hint)
                for job in self._jobs]

    def start(self, task: VideoTask) -> None:
        if self.free <= 0:
            raise PipelineError("no free worker slot; wait for a video to finish first")
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(target=_worker_main, args=(task, sender, os.getpid()),
                                        name=f"omni-prepare:{task.source.rel_path}",
                                        daemon=True)
        with _environment(WORKER_ENV):
            process.start()  # starts the forkserver too, the first time
        sender.close()  # the worker holds the only write end: EOF means it is gone
        self._jobs.append(_Job(task, process, receiver, time.monotonic(),
                               file_bytes=_file_size(task.source.path)))

    def wait(self, timeout: float) -> list[VideoOutcome]:
        """Block up to `timeout` seconds for news; return the videos that finished.

        Raises `OutputError` when a worker could not write its output."""
        if not self._jobs:
            return []
        now = time.monotonic()
        deadline = min(job.started + job.limit(self.timeout_factor, self.timeout_min_s)
                       for job in self._jobs)
        handles = [job.conn for job in self._jobs if not job.eof]
        handles += [job.process.sentinel for job in self._jobs]
        wait_for(handles, timeout=max(0.0, min(timeout, deadline - now)))
        finished: list[VideoOutcome] = []
        for job in list(self._jobs):
            # Exit status first: once a worker has exited, everything it sent is in the pipe.
            exited = job.process.exitcode is not None
            self._drain(job)
            if job.output_error is not None:
                self._remove(job, kill=True)
                raise OutputError(job.output_error)
            outcome = self._check(job, exited)
            if outcome is not None:
                finished.append(outcome)
        return finished

    def _drain(self, job: _Job) -> None:
        while not job.eof and job.conn.poll():
            try:
                message = job.conn.recv()
            except (EOFError, OSError):
                job.eof = True
                break
            kind = message[0]
            if kind == "probe":
                job.duration_hint = message[1]
            elif kind == "progress":
                job.clips, job.decoded = message[1], message[2]
            elif kind == "done":
                job.outcome = message[1]
            elif kind == "output_error":
                job.output_error = message[1]

    def _check(self, job: _Job, exited: bool) -> VideoOutcome | None:
        """The job's outcome if it is over (done, crashed or timed out), else None."""
        task = job.task
        elapsed = time.monotonic() - job.started
        if job.outcome is not None:
            job.process.join(EXIT_GRACE_S)
            self._remove(job, kill=job.process.is_alive())
            job.outcome.wall_seconds = elapsed
            return job.outcome
        limit = job.limit(self.timeout_factor, self.timeout_min_s)
        if exited:
            code = job.process.exitcode
            assert code is not None
            if code < 0:
                hint = " (out of memory?)" if code == -signal.SIGKILL else ""
                reason = f"worker crashed with {_signal_name(code)}{hint}"
            else:
                reason = f"worker exited with status {code} without a result"
        elif elapsed > limit:
            reason = f"timed out after {limit:.0f} s"
        else:
            return None
        self._remove(job, kill=True)
        task.part_path.unlink(missing_ok=True)
        return VideoOutcome(task.source.rel_path, task.source.video_id, FAILED, reason,
                            wall_seconds=elapsed, split=task.split)

    def _remove(self, job: _Job, kill: bool) -> None:
        if kill:
            _kill_group(job.process)
        job.process.join()
        job.conn.close()
        self._jobs.remove(job)

    def close(self) -> None:
        """Kill every running worker and forget it (their part files are left to the caller)."""
        for job in list(self._jobs):
            self._remove(job, kill=True)

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the processes started inside, then restore them: the
    forkserver (or a spawned worker) inherits them, this process's loaded libraries ignore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _kill_group(process: BaseProcess) -> None:
    """SIGKILL the worker and whatever it started (ffmpeg), via its process group."""
    pid = process.pid
    if pid is not None and hasattr(os, "killpg"):
        try:
            os.killpg(pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            pass  # not (yet) a group leader, or already gone
    process.kill()
