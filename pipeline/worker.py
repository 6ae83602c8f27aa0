"""Prepare each video in its own process, under a time limit, so a bad file fails alone.

**One process per video.** A decoder that segfaults, hangs in C code or leaks takes only its
own process down; the parent sees the exit (signal name for a crash) or the deadline pass,
kills the process group, records the reason and goes on. A pool that reuses processes would
either die with the first crash (`ProcessPoolExecutor` breaks every pending future) or need
the same bookkeeping. Processes come from a *forkserver* that has imported the decoder, the
sample code and the schema once, so starting one costs a fork (milliseconds), not an
interpreter start; where forkserver is unavailable (Windows) plain spawn is used. Each worker
leads its own process group (so a kill also reaches the ffmpeg processes of the ffmpeg
backend), ignores Ctrl-C (the parent stops it), and exits within a second if the parent is
killed outright.

**Samples never cross a pipe.** The worker writes its video's samples itself, to a part file
(`pipeline.shards.PartWriter`); the parent later copies byte ranges of finished part files into
shards. Samples (~70 KB each with mp4 clips at the defaults, ~660 KB with raw npy) would
otherwise be pickled, piped and unpickled once more each; with files, memory stays bounded by a
few windows per worker whatever the video's length, the parent stays idle while workers
decode, and a crashed video leaves only a part file to delete. The pipe carries a few small
messages: the probed duration, throttled progress, and the outcome. Inside a worker whose
decoder has several threads, a second thread encodes and writes samples while the main thread
decodes (`_EncodeThread`); a worker with one decoder thread (a worker per CPU) does everything
on that one thread (`_InlineEncoder`): no core is idle for a second thread to use.

**Time limit.** `max(timeout_min_s, timeout_factor * D)`, where D is the larger of the duration
the container states and the footage decoded so far (so a file with no stated duration, or a
wrong one, keeps its time as long as it decodes at least 1/factor of real time). Before the
worker has probed the file the limit is `timeout_min_s`. The stated duration is a header
field anyone can patch, so it counts only up to what the file's size can hold
(`MIN_BYTES_PER_SECOND`) and never past `MAX_STATED_S` (`time_limit`); decoded footage has
no such bound, being real work done.

**Outcome of a video** (`VideoOutcome.status`):

- ``prepared``: at least one clip written. Decoder complaints (a truncated file, corrupt
  packets) and transcript problems are listed in `warnings`; a malformed subtitle file leaves
  the video without text (`transcript_source` "none", `transcript_error` set).
- ``skipped``: nothing wrong with the file, but no sample to make: shorter than one clip
  ("shorter than one clip (1.50 s < 2 s)"), no video stream ("no video stream (audio only)"),
  or not to be read (a symlink out of the input folder, `VideoSource.refused`; never opened).
- ``failed``: unreadable (zero bytes, not media, an MP4 cut before its index was written, no
  decodable frame, no complete clip before the decoder gave up, or cut short before the
  first clip ends while the container states a longer duration), crashed ("worker crashed
  with SIGSEGV"), timed out ("timed out after 60 s") or raised ("<ExceptionType>: message").

A failure to *write* (full disk, quota, read-only filesystem) is not the video's fault: the
worker reports it as an output error and the run stops (see `OutputError`).

**Test-only fault injection.** `OMNI_TEST_FAULT="crash:<s>,hang:<s>,raise:<s>"` makes the worker
of every video whose path contains ``<s>`` kill itself with SIGSEGV, sleep forever, or raise,
right after probing. It exists so tests can prove the isolation with real crashes and hangs;
the parent reads it when it builds tasks (`fault_from_env`) and passes it to the worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.config import PrepareConfig
from pipeline.discover import VideoSource
from pipeline.errors import DecodeError, PipelineError
from pipeline.members import DEFAULT_CLIP_ENCODING, MEMBER_TEXT
from pipeline.shards import PartFile, PartWriter
from pipeline.split import TRAIN, Split

# PyAV, numpy, PIL and the modules built on them (`pipeline.decode`, `pipeline.sample`, the
# schema's encoders, the transcript parsers) are needed only in workers: the worker-side
# functions import them when they run, so the parent of `omni prepare`, which only plans, runs
# workers and writes stats, starts without them (~0.5 s less); the forkserver preloads them
# (`_PRELOAD`), so the workers forked from it find them loaded. Neither side imports torch
# (seconds of start-up): tests/test_torch_free.py checks both.
if TYPE_CHECKING:
    from pipeline.decode import DecodeStats, Window
    from pipeline.sample import VideoContext

Status = Literal["prepared", "failed", "skipped"]
PREPARED: Status = "prepared"
FAILED: Status = "failed"
SKIPPED: Status = "skipped"

FAULT_ENV = "OMNI_TEST_FAULT"
FAULT_KINDS = ("crash", "hang", "raise")
# Progress messages per worker are throttled to this interval.
PROGRESS_INTERVAL_S = 0.25
# How long a worker that reported its outcome may take to exit before it is killed.
EXIT_GRACE_S = 5.0
# A video whose picture ends this much (seconds, and fraction of the stated duration) before
# the duration its container states gets a warning (`_short_of_stated`).
SHORT_OF_STATED_S = 1.0
SHORT_OF_STATED_FRACTION = 0.05
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


class OutputError(PipelineError):
    """Writing the output failed (disk full, quota, permissions): stop the run, keep the units
    already committed, and let a rerun resume once the cause is fixed."""


@dataclass(frozen=True)
class VideoTask:
    """One video to prepare into the part file `part_path`."""

    source: VideoSource
    part_path: Path
    config: PrepareConfig
    clip_encoding: str = DEFAULT_CLIP_ENCODING
    fault: str | None = None  # test-only: see the module docstring
    # Video decoder threads, 0: the decoder's choice; 1 also encodes in line (one thread in
    # all). Never changes the samples.
    threads: int = 0
    split: Split = TRAIN  # decided by the parent (`pipeline.split`), recorded in the outcome


@dataclass
class VideoOutcome:
    """What happened to one video; stored (without `part`) in its unit's stats file."""

    source: str  # path relative to the input folder
    video_id: str
    status: Status = FAILED
    reason: str | None = None  # why it failed or was skipped
    warnings: list[str] = field(default_factory=list)
    clips: int = 0
    clips_with_text: int = 0  # clips whose window overlaps some transcript text
    footage_seconds: float = 0.0  # decoded duration (0 when it could not be decoded)
    has_audio: bool | None = None
    rotation: int | None = None
    flip: bool | None = None  # mirrored left-right for display, after the rotation
    transcript_source: str | None = None
    transcript_timed: bool | None = None
    transcript_error: str | None = None
    packets_skipped: int = 0
    wall_seconds: float = 0.0
    split: Split = TRAIN  # which shards its samples went to; stats files without it: train
    part: PartFile | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["part"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoOutcome:
        return cls(**{key: value for key, value in data.items() if key != "part"})


@dataclass(frozen=True)
class RunningVideo:
    """A snapshot of a video being prepared, for progress displays."""

    source: str
    clips: int
    decoded_seconds: float
    duration_hint: float | None


def fault_from_env() -> str | None:
    """The test-only fault specification, validated, or None when the variable is unset."""
    spec = os.environ.get(FAULT_ENV) or None
    if spec is not None:
        for item in spec.split(","):
            kind, _, needle = item.partition(":")
            if kind not in FAULT_KINDS or not needle:
                raise PipelineError(f"{FAULT_ENV} must be comma-separated KIND:SUBSTRING with "
                                    f"KIND in {', '.join(FAULT_KINDS)}; got {item!r}")
    return spec


# --------------------------------------------------------------------------- worker side
def _inject_fault(spec: str | None, path: Path) -> None:
    for item in (spec or "").split(","):
        kind, _, needle = item.partition(":")
        if not needle or needle not in str(path):
            continue
        if kind == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif kind == "hang":
            while True:
                time.sleep(3600)
        elif kind == "raise":
            raise RuntimeError(f"fault injected by {FAULT_ENV}")


def _audio_only(path: Path) -> bool:
    """Whether the file opens and has audio but no real video stream (cover art aside)."""
    import av

    attached_pic = int(av.stream.Disposition.attached_pic)
    try:
        with av.open(str(path)) as container:
            videos = [s for s in container.streams.video
                      if not int(s.disposition) & attached_pic]
            return bool(container.streams.audio) and not videos
    except (av.FFmpegError, OSError):
        return False


class _Writer:
    """`PartWriter` whose filesystem errors become `OutputError` (the run must stop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_end = 0.0
        self.with_text = 0  # samples whose transcript text is not empty
        self.text_cut = 0  # samples whose text was cut to MAX_WINDOW_TEXT_BYTES
        try:
            self._writer = PartWriter(path)
        except OSError as err:
            raise OutputError(f"cannot create {path}: {err.strerror or err}") from err

    @property
    def samples(self) -> int:
        return self._writer.part.samples

    def write(self, sample: dict[str, str | bytes], end: float, text_cut: bool = False) -> None:
        """Append a sample; `end` is its window's end, the footage covered so far."""
        try:
            self._writer.write(sample)
        except OSError as err:
            raise OutputError(f"cannot write {self.path}: {err.strerror or err}") from err
        self.last_end = end
        self.with_text += bool(sample.get(MEMBER_TEXT))
        self.text_cut += text_cut

    def close(self) -> PartFile:
        try:
            return self._writer.close()
        except OSError as err:
            raise OutputError(f"cannot write {self.path}: {err.strerror or err}") from err

    def discard(self) -> None:
        try:
            self._writer.close()
        except OSError:
            pass
        self.path.unlink(missing_ok=True)


class _EncodeThread:
    """Assembles and writes samples in a second thread while the main thread decodes.

    Encoding a window (x264 for the clip, JPEG, the mel's STFT, the tar write) runs in C code
    that releases the GIL, so it overlaps decoding instead of adding to it: measured on a
    720p30 H.264 file, encoding in line added ~25% to the decode time, in a thread ~5%. The
    queue holds at most `QUEUE_WINDOWS`, so memory stays bounded by a few windows. An error
    in the thread stops the work and is raised in the main thread by `put` or `raise_error`.
    """

    QUEUE_WINDOWS = 2

    def __init__(self, writer: _Writer, context: VideoContext, config: PrepareConfig) -> None:
        self._writer = writer
        self._context = context
        self._config = config
        self._queue: queue.Queue[Window | None] = queue.Queue(maxsize=self.QUEUE_WINDOWS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="omni-encode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from pipeline.sample import encode_fields, sample_fields

        while (window := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so that `put` never blocks forever
            try:
                fields = sample_fields(window, self._context, self._config)
                sample = encode_fields(fields, self._config, self._context.clip_encoding)
                self._writer.write(sample, window.end, fields.text_cut)
            except BaseException as err:
                self._error = err

    def put(self, window: Window) -> None:
        self.raise_error()
        self._queue.put(window)

    def stop(self) -> None:
        """Let the queued windows be written, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error


class _InlineEncoder:
    """`_EncodeThread`'s interface on the calling thread: each window is encoded and written
    as it is put. For a worker with one decoder thread, so that the worker is one thread in
    all: with a worker per CPU, a second thread per worker only adds hand-overs (and a lone
    single-threaded worker then measures the per-worker work, which workers scale)."""

    def __init__(self, writer: _Writer, context: VideoContext, config: PrepareConfig) -> None:
        from pipeline.sample import encode_fields, sample_fields

        self._encode_fields, self._sample_fields = encode_fields, sample_fields
        self._writer = writer
        self._context = context
        self._config = config

    def put(self, window: Window) -> None:
        fields = self._sample_fields(window, self._context, self._config)
        sample = self._encode_fields(fields, self._config, self._context.clip_encoding)
        self._writer.write(sample, window.end, fields.text_cut)

    def stop(self) -> None:
        """Nothing is queued."""

    def raise_error(self) -> None:
        """Errors were raised by `put` itself."""


def _decode_and_write(task: VideoTask, context: VideoContext, stats: DecodeStats,
                      writer: _Writer, send: Callable[[tuple[Any, ...]], None]
                      ) -> DecodeError | None:
    """Decode every window into `writer`; return the DecodeError that ended decoding early,
    if any (the windows before it are written). Other errors propagate."""
    encoder = (_InlineEncoder if task.threads == 1 else _EncodeThread)(
        writer, context, task.config)
    from pipeline.decode import iter_windows

    decode_error = None
    last_sent = time.monotonic()
    try:
        for window in iter_windows(task.source.path, task.config, stats, task.threads):
            encoder.put(window)
            if time.monotonic() - last_sent >= PROGRESS_INTERVAL_S:
                send(("progress", writer.samples, writer.last_end))
                last_sent = time.monotonic()
    except DecodeError as err:
        decode_error = err
    finally:
        encoder.stop()
    encoder.raise_error()  # a failed write or sample outranks a decoder complaint
    return decode_error


def prepare_video(task: VideoTask, send: Callable[[tuple[Any, ...]], None]) -> VideoOutcome:
    """Probe, read the transcript, decode and write every sample of one video.

    Runs inside a worker process (or directly, in tests). `send` receives ("probe",
    duration_hint) once and ("progress", clips, decoded_seconds) now and then. Any exception
    makes the video fail with reason "<ExceptionType>: <message>" and removes its part file;
    only `OutputError` (the part file cannot be written) propagates.
    """
    started = time.perf_counter()
    outcome = VideoOutcome(task.source.rel_path, task.source.video_id, split=task.split)
    try:
        _prepare(task, send, outcome)
    except OutputError:
        task.part_path.unlink(missing_ok=True)
        raise
    except Exception as err:
        task.part_path.unlink(missing_ok=True)
        outcome.status, outcome.part = FAILED, None
        outcome.reason = f"{type(err).__name__}: {err}"
    outcome.wall_seconds = time.perf_counter() - started
    return outcome


def _prepare(task: VideoTask, send: Callable[[tuple[Any, ...]], None],
             outcome: VideoOutcome) -> None:
    from pipeline.decode import DecodeStats, probe
    from pipeline.sample import video_context
    from pipeline.transcripts import MAX_WINDOW_TEXT_BYTES

    source, config = task.source, task.config
    if source.refused is not None:
        outcome.status, outcome.reason = SKIPPED, source.refused
        return
    try:
        info = probe(source.path, config)
    except DecodeError as err:
        if _audio_only(source.path):
            outcome.status, outcome.reason = SKIPPED, "no video stream (audio only)"
        else:
            outcome.reason = str(err)
        return
    send(("probe", info.duration_hint))
    outcome.has_audio, outcome.rotation, outcome.flip = info.has_audio, info.rotation, info.flip
    probed = video_context(source, info, task.clip_encoding,
                           follow_symlinks=config.follow_symlinks)
    context = probed.context
    outcome.warnings.extend(probed.warnings)
    outcome.transcript_error = probed.transcript_error
    outcome.transcript_source = context.transcript.source
    outcome.transcript_timed = context.transcript.timed
    _inject_fault(task.fault, source.path)

    stats = DecodeStats()
    writer = _Writer(task.part_path)
    try:
        decode_error = _decode_and_write(task, context, stats, writer, send)
        outcome.clips = writer.samples
        outcome.clips_with_text = writer.with_text
        if writer.text_cut:
            outcome.warnings.append(
                f"transcript: the text of {writer.text_cut} clip(s) was cut to "
                f"{MAX_WINDOW_TEXT_BYTES} bytes (a clip's text may not be longer)")
        if decode_error is not None:
            if outcome.clips == 0:
                outcome.reason = str(decode_error)
                writer.discard()
                return
            # The windows before the error are complete and correct: keep them, say why.
            outcome.warnings.append(f"decoding stopped early: {decode_error}")
        outcome.footage_seconds = (stats.duration if stats.duration is not None
                                   else writer.last_end)
        outcome.packets_skipped = stats.packets_skipped
        short = _short_of_stated(outcome.footage_seconds, info.duration_hint, info.start_time)
        if outcome.clips == 0:
            writer.discard()
            if stats.first_error:
                outcome.reason = (f"no complete clip before the decoder gave up "
                                  f"({outcome.footage_seconds:.2f} s decoded): "
                                  f"{stats.first_error}")
            elif short:  # a long video cut short is broken, not short
                outcome.reason = f"no complete clip: {short}"
            else:
                outcome.status = SKIPPED
                outcome.reason = (f"shorter than one clip ({outcome.footage_seconds:.2f} s < "
                                  f"{config.clip_duration:g} s)")
            return
        outcome.part = writer.close()
    except BaseException:
        writer.discard()
        raise
    outcome.status = PREPARED
    if short and not stats.first_error and decode_error is None:
        outcome.warnings.append(short)
    if stats.first_error:
        count = stats.packets_skipped
        skipped = f" ({count} corrupt packet{'s' * (count != 1)} skipped)" if count else ""
        outcome.warnings.append(f"decoder: {stats.first_error}{skipped}")


def _short_of_stated(decoded: float, stated: float | None, start: float) -> str | None:
    """A warning when the picture ends well before the duration the container states.

    Some demuxers (Matroska) reach the end of a cut-short file without an error, so this is
    the only sign of a truncated file; it also flags audio that runs on long after the picture.
    Matroska states its end time rather than its span when the file starts at `start` > 0, so
    the picture counts as complete if it fills either reading of the stated duration.
    """
    if stated is None:
        return None
    shortfall = stated - decoded
    if start > 0:
        shortfall = min(shortfall, stated - start - decoded)
    if shortfall <= max(SHORT_OF_STATED_S, SHORT_OF_STATED_FRACTION * stated):
        return None
    return (f"the picture ends at {decoded:.2f} s of the {stated:.2f} s the container states "
            f"(file cut short, or audio outlasting the picture)")


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


def _worker_main(task: VideoTask, conn: Connection, parent_pid: int) -> None:
    """Entry point of a worker process: prepare one video, report, exit without teardown."""
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)  # own process group: a timeout kills ffmpeg children too
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


# --------------------------------------------------------------------------- parent side
# Imported once by the forkserver so that each forked worker starts with them loaded (the
# decode backends are otherwise imported lazily, on a video's first probe; `pipeline.sample`
# on its first sample).
_PRELOAD = [__name__, "pipeline.decode_pyav", "pipeline.decode_ffmpeg", "pipeline.sample"]


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def start_forkserver() -> None:
    """Start the forkserver that workers are forked from, if not running, and return at once.

    It imports `_PRELOAD` (numpy, PyAV, PIL, the sample code: ~0.5 s) in its own process, so a
    caller that starts it before its own work (importing the CLI, discovery, planning) overlaps
    the two instead of waiting for it at the first `VideoRunner.start`. Where forkserver is
    unavailable this does nothing: spawned workers have no server to start.
    """
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


class VideoRunner:
    """Runs up to `workers` videos at once, each in its own process with a time limit.

    `start` a task when `free` is positive; `wait` returns the outcomes of videos that
    finished (successfully or not). Always `close` it (or use it as a context manager): every
    worker still running is killed.
    """

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

        Raises `OutputError` when a worker could not write its output.
        """
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

    def __enter__(self) -> VideoRunner:
        return self

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
