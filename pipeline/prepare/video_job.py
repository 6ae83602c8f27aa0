"""One video's job in `omni prepare`: probe it, read its transcript, decode its windows and
write every sample to its part file, then say what happened (`prepare_video`). It runs inside
a worker process (`pipeline.prepare.worker`, which owns the processes, time limits and kills), or
directly in tests.

**Samples never cross a pipe.** The job writes its video's samples itself, to a part file
(`shards.files.PartWriter`); the parent later copies byte ranges of finished part files into
shards. Samples (~70 KB each with mp4 clips at the defaults, ~660 KB with raw npy) would
otherwise be pickled, piped and unpickled once more each; with files, memory stays bounded by a
few windows per worker whatever the video's length, the parent stays idle while workers
decode, and a crashed video leaves only a part file to delete. The pipe carries a few small
messages: the probed duration, throttled progress, and the outcome. Inside a worker whose
decoder has several threads, a second thread encodes and writes samples while the main thread
decodes (`_EncodeThread`); a worker with one decoder thread (a worker per CPU) does everything
on that one thread (`_InlineEncoder`): no core is idle for a second thread to use.

**Memory.** A worker may reserve `memory_limit` bytes of address space (`prepare.worker` sets
it as RLIMIT_AS, which its ffmpeg processes inherit): a file that needs more fails alone, with
"out of memory", instead of taking the machine. It is address space, not resident memory, since
that is what the kernel can bound without cgroups: glibc reserves 64 MB for each thread's malloc
arena and 8 MB for its stack, so a 320x240 video reserves 0.4 GB with one decoder thread and
1.4 GB with 17 while using under 0.1 GB; an 8K H.264 video (frames of MAX_FRAME_BYTES are
refused before that, `pipeline.media.probe`) reserves 3.0 GB. Hence a base plus a share per
decoder thread."""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import PrepareConfig
from pipeline.errors import DecodeError
from pipeline.media.discover import VideoSource
from pipeline.shards.files import PartFile, PartWriter
from pipeline.shards.outcome import FAILED, PREPARED, SKIPPED, OutputError, VideoOutcome
from pipeline.shards.schema import DEFAULT_CLIP_ENCODING, MEMBER_TEXT
from pipeline.shards.split import TRAIN, Split

# PyAV, numpy, PIL and the modules built on them (`media.decode`, `prepare.sample`, the
# schema's encoders, the transcript parsers) are imported by the functions that use them, when
# they run: the parent of `omni prepare`, which imports this module for `VideoTask`, starts
# without them (~0.5 s less); the forkserver preloads them (`prepare.worker`), so the workers
# forked from it find them loaded. Neither side imports torch (seconds of start-up):
# tests/test_torch_free.py checks both.
if TYPE_CHECKING:
    from pipeline.media.windows import DecodeStats, Window
    from pipeline.prepare.sample import VideoContext

# Progress messages per worker are throttled to this interval.
PROGRESS_INTERVAL_S = 0.25

# Address space a video's job may reserve (`memory_limit`): measured peaks in the module doc.
MEMORY_BASE_BYTES = 4 * 2**30
MEMORY_PER_THREAD_BYTES = 256 * 2**20

# A video whose picture ends this much (seconds, and fraction of the stated duration) before
# the duration its container states gets a warning (`_short_of_stated`).
SHORT_OF_STATED_S = 1.0
SHORT_OF_STATED_FRACTION = 0.05


@dataclass(frozen=True)
class VideoTask:
    """One video to prepare into the part file `part_path`."""

    source: VideoSource
    part_path: Path
    config: PrepareConfig
    clip_encoding: str = DEFAULT_CLIP_ENCODING
    # Video decoder threads, 0: the decoder's choice; 1 also encodes in line (one thread in
    # all). Never changes the samples.
    threads: int = 0
    split: Split = TRAIN  # decided by the parent (`pipeline.shards.split`), recorded in the outcome


def memory_limit(threads: int) -> int:
    """Bytes of address space the job of a video decoded with `threads` decoder threads (0:
    the decoder's choice, one more than the CPUs) may reserve; see the module docstring."""
    threads = threads or (os.cpu_count() or 1) + 1
    return MEMORY_BASE_BYTES + threads * MEMORY_PER_THREAD_BYTES


def _audio_only(path: Path) -> bool:
    """Whether the file opens and has audio but no real video stream (cover art aside).

    Opened as the probe opens files (`open_container`: the decoder guard on), since it runs
    on files the probe refused, an oversized picture among them."""
    import av

    from pipeline.media.probe import open_container

    attached_pic = int(av.stream.Disposition.attached_pic)
    try:
        with open_container(path) as container:
            videos = [s for s in container.streams.video if not int(s.disposition) & attached_pic]
            return bool(container.streams.audio) and not videos
    except (DecodeError, av.FFmpegError, OSError):
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


def _write_window(window: Window, writer: _Writer, context: VideoContext,
                  config: PrepareConfig) -> None:
    """Assemble, encode and write the sample of one window (on either encoder's thread)."""
    from pipeline.prepare.sample import encode_fields, sample_fields

    fields = sample_fields(window, context, config)
    writer.write(encode_fields(fields, config, context.clip_encoding), window.end,
                 fields.text_cut)


class _EncodeThread:
    """Assembles and writes samples in a second thread while the main thread decodes.

    Encoding a window (x264 for the clip, JPEG, the mel's STFT, the tar write) runs in C code
    that releases the GIL, so it overlaps decoding instead of adding to it: measured on a
    720p30 H.264 file, encoding in line added ~25% to the decode time, in a thread ~5%. The
    queue holds at most `QUEUE_WINDOWS`, so memory stays bounded by a few windows. An error
    in the thread stops the work and is raised in the main thread by `put` or `raise_error`."""

    QUEUE_WINDOWS = 2

    def __init__(self, write: Callable[[Window], None]) -> None:
        self._write = write
        self._queue: queue.Queue[Window | None] = queue.Queue(maxsize=self.QUEUE_WINDOWS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="omni-encode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (window := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so that `put` never blocks forever
            try:
                self._write(window)
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


@dataclass
class _InlineEncoder:
    """`_EncodeThread`'s interface on the calling thread: each window is encoded and written
    as it is put. For a worker with one decoder thread, so that the worker is one thread in
    all: with a worker per CPU, a second thread per worker only adds hand-overs (and a lone
    single-threaded worker then measures the per-worker work, which workers scale)."""

    put: Callable[[Window], None]

    def stop(self) -> None:
        """Nothing is queued."""

    def raise_error(self) -> None:
        """Errors were raised by `put` itself."""


def _decode_and_write(task: VideoTask, context: VideoContext, stats: DecodeStats,
                      writer: _Writer, send: Callable[[tuple[Any, ...]], None]
                      ) -> DecodeError | None:
    """Decode every window into `writer`; return the DecodeError that ended decoding early,
    if any (the windows before it are written). Other errors propagate."""
    write = functools.partial(_write_window, writer=writer, context=context, config=task.config)
    encoder = (_InlineEncoder if task.threads == 1 else _EncodeThread)(write)
    from pipeline.media.decode import iter_windows

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
    only `OutputError` (the part file cannot be written) propagates."""
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
        if isinstance(err, MemoryError):
            outcome.reason = f"out of memory{_limit_note()}: {outcome.reason}"
    outcome.wall_seconds = time.perf_counter() - started
    return outcome


def _limit_note() -> str:
    """The address-space limit this process runs under, as words for a failure reason."""
    try:
        import resource
    except ImportError:  # Windows: no limit
        return ""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return ""
    return f" (a prepare worker may reserve {limit / 2**30:.2f} GiB)"


def _prepare(task: VideoTask, send: Callable[[tuple[Any, ...]], None],
             outcome: VideoOutcome) -> None:
    from pipeline.media.decode import probe
    from pipeline.media.transcripts import MAX_WINDOW_TEXT_BYTES
    from pipeline.media.windows import DecodeStats
    from pipeline.prepare.sample import video_context

    source, config = task.source, task.config
    if source.refused is not None:
        outcome.status, outcome.reason = SKIPPED, source.refused
        return
    try:
        info = probe(source.path)
    except DecodeError as err:
        if _audio_only(source.path):
            outcome.status, outcome.reason = SKIPPED, "no video stream (audio only)"
        else:
            outcome.reason = str(err)
        return
    send(("probe", info.duration_hint))
    outcome.has_audio, outcome.rotation, outcome.flip = info.has_audio, info.rotation, info.flip
    probed = video_context(source, info, task.clip_encoding, follow_symlinks=config.follow_symlinks)
    context = probed.context
    outcome.warnings.extend(probed.warnings)
    outcome.transcript_error = probed.transcript_error
    outcome.transcript_source = context.transcript.source
    outcome.transcript_timed = context.transcript.timed

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
        outcome.decode_errors = stats.decode_errors
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
    problem = stats.first_error or stats.first_decode_error
    if problem:
        counts = [f"{count} {noun}{'s' * (count != 1)}{what}" for count, noun, what in (
            (stats.decode_errors, "decode error", ""),
            (stats.packets_skipped, "corrupt packet", " skipped")) if count]
        details = f" ({', '.join(counts)}; its clips may show the damage)" if counts else ""
        outcome.warnings.append(f"decoder: {problem}{details}")


def _short_of_stated(decoded: float, stated: float | None, start: float) -> str | None:
    """A warning when the picture ends well before the duration the container states.

    Some demuxers (Matroska) reach the end of a cut-short file without an error, so this is
    the only sign of a truncated file; it also flags audio that runs on long after the picture.
    Matroska states its end time rather than its span when the file starts at `start` > 0, so
    the picture counts as complete if it fills either reading of the stated duration."""
    if stated is None:
        return None
    shortfall = stated - decoded
    if start > 0:
        shortfall = min(shortfall, stated - start - decoded)
    if shortfall <= max(SHORT_OF_STATED_S, SHORT_OF_STATED_FRACTION * stated):
        return None
    return (f"the picture ends at {decoded:.2f} s of the {stated:.2f} s the container states "
            f"(file cut short, or audio outlasting the picture)")
