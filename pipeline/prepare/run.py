"""`omni prepare` as a library call: a folder of videos -> time-aligned WebDataset shards.

The stages, in order (`prepare`):

1. check the folders: the input is a folder; the output is (or can be made) a writable folder
   outside the input, new, empty or prepared before; lock it (`pipeline.lock`) for the run;
2. `discover_videos` (sorted) and `plan_units` (consecutive videos, `videos_per_unit` each);
3. refuse to mix configurations: every stats file already in the output must carry the same
   `Fingerprint`, unless `overwrite` (which deletes the outputs of the units this run owns:
   the whole folder for a run without `--part`);
4. for the units of this `--part`: skip the done ones (see `pipeline.prepare.outdir`), clear every
   trace of the others (stale temporary files, shards of an interrupted commit);
5. prepare the remaining videos, each in its own worker process (`pipeline.prepare.worker`), up to
   `workers` at once; commit a unit (shards renamed into place, then its stats file) as soon as
   its last video is finished; the samples of its eval-split videos (`pipeline.shards.split`) go to
   shards of their own;
6. write `manifest.json` if every unit of the plan is now done (other parts included).

What each kind of input, output folder and failure leads to (short, silent, cut-short and
broken videos; malformed or untimed transcripts; a full disk; an output folder inside the input
or in use by another run; symlinks out of the input) is stated once, in README.md, "Preparing
videos" (tested by tests/test_prepare*.py). Units beyond the current plan (the input lost videos)
are removed and a unit whose video list changed is prepared again: a folder mirrors its input."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import PrepareConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.lock import FolderLock
from pipeline.media.discover import VIDEO_EXTENSIONS, VideoSource, discover_videos
from pipeline.prepare.outdir import Fingerprint, OutputDir, UnitStats, utc_now, write_manifest
from pipeline.prepare.plan import Part, WorkUnit, plan_units, select_part
from pipeline.prepare.processes import usable_cpus
from pipeline.prepare.video_job import VideoTask
from pipeline.prepare.worker import RunningVideo, VideoRunner, start_forkserver
from pipeline.shards.files import PartFile, ShardInfo, unit_name, write_unit_shards
from pipeline.shards.manifest import Totals, split_totals
from pipeline.shards.outcome import OutputError, VideoOutcome
from pipeline.shards.schema import CLIP_ENCODINGS, DEFAULT_CLIP_ENCODING
from pipeline.shards.split import SPLITS, Split, split_of

# How long the orchestrator sleeps between looks at its workers when nothing happens.
POLL_INTERVAL_S = 0.25


def decoder_threads(workers: int, cpus: int | None = None) -> int:
    """Video decoder threads for each of `workers` workers: the CPUs shared out among them.

    A lone worker gets the machine, so `--workers 1` decodes as fast as ffmpeg does; with a
    worker per CPU each decodes on one thread, as frame threads would only fight the other
    workers for the same cores (and each one costs CPU to hand frames over). A share of
    several CPUs gets one thread more than CPUs, as FFmpeg's automatic choice does: frame
    threads wait on each other's reference frames, so as many threads as cores leave cores
    idle (one worker on two cores, a 24 s 720p30 video: 2.6-2.9 s with 3 threads, 3.0-3.2 s
    with 2, 3.5-3.8 s with 1)."""
    share = (cpus if cpus is not None else usable_cpus()) // workers
    return share + 1 if share > 1 else 1


@dataclass(frozen=True)
class RunOptions:
    """How a prepare run works; none of it changes the samples, so it can change between
    reruns into the same folder.

    `timeout_factor` and `timeout_min_s` set each video's time limit:
    `max(timeout_min_s, timeout_factor * duration)` (see `pipeline.prepare.worker.time_limit`)."""

    workers: int = field(default_factory=usable_cpus)
    part: Part = field(default_factory=Part)
    overwrite: bool = False
    timeout_factor: float = 10.0
    timeout_min_s: float = 60.0
    clip_encoding: str = DEFAULT_CLIP_ENCODING
    # Video decoder threads per worker; None: `decoder_threads(workers)`. With one, a worker
    # also encodes on that thread (`video_job._InlineEncoder`), so it never uses an idle
    # core and a run's speed-up with workers is the scaling alone.
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 (or None: the CPUs shared out among the "
                              f"workers), got {self.threads}")
        for name in ("timeout_factor", "timeout_min_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.clip_encoding not in CLIP_ENCODINGS:
            raise ConfigError(f"clip_encoding must be one of {', '.join(CLIP_ENCODINGS)}, "
                              f"got {self.clip_encoding!r}")


class FolderArgumentError(PipelineError):
    """VIDEO_DIR or OUT_DIR cannot be used as given (a missing input folder, an output folder
    of other things): a bad argument, which the CLI exits 2 for."""


class ConfigMismatchError(PipelineError):
    """The output folder holds units prepared with another configuration."""

    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences


@dataclass(frozen=True)
class RunPlan:
    """What a run is about to do; given to `PrepareCallbacks.on_start`."""

    videos: int  # discovered in the input folder
    units: int  # in the whole plan
    part: Part
    units_in_part: int
    units_done: int  # of this part, done before this run: skipped
    units_todo: int
    videos_todo: int


@dataclass(frozen=True)
class RunProgress:
    """Where a run stands; given to `PrepareCallbacks.on_progress` a few times a second."""

    videos_todo: int
    videos_done: int
    clips: int  # finished videos plus the clips written so far by running ones
    footage_seconds: float  # likewise, seconds of video decoded
    running: list[RunningVideo]


class PrepareCallbacks:
    """Hooks for a front end (the CLI draws its progress bar with them). All are optional and
    run in the orchestrating process, between looks at the workers: keep them quick."""

    def on_start(self, plan: RunPlan) -> None: ...

    def on_progress(self, progress: RunProgress) -> None: ...

    def on_video(self, outcome: VideoOutcome) -> None: ...


@dataclass
class PrepareResult:
    """What a run did, over the units of its part (done before, or prepared now)."""

    out_dir: Path
    plan: RunPlan
    videos: list[VideoOutcome]  # every video of this part's units, in input order
    shards: list[ShardInfo]  # every shard of this part's units
    manifest: Path | None  # None while units of other parts are still missing
    units_missing: int  # units of the whole plan that are not done yet
    units_removed: int  # stale units beyond the plan that were deleted
    elapsed_s: float

    @property
    def totals(self) -> Totals:
        return Totals.of(self.videos, len(self.shards), sum(s.bytes for s in self.shards))

    @property
    def splits(self) -> dict[Split, Totals]:
        """`totals` per split (see `pipeline.shards.manifest.split_totals`)."""
        return split_totals(self.videos, self.shards)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what `omni prepare --json` prints)."""
        plan = self.plan
        return {"out_dir": str(self.out_dir), "part": str(plan.part),
                "units": {"total": plan.units, "in_part": plan.units_in_part,
                          "done_before": plan.units_done, "prepared_now": plan.units_todo,
                          "missing": self.units_missing, "removed": self.units_removed},
                "totals": self.totals.to_dict(),
                "splits": {split: totals.to_dict() for split, totals in self.splits.items()},
                "manifest": str(self.manifest) if self.manifest is not None else None,
                "elapsed_s": round(self.elapsed_s, 3),
                "videos": [video.to_dict() for video in self.videos],
                "shards": [shard.to_dict() for shard in self.shards]}


_LISTED_ENTRIES = 3  # names of an unrelated output folder's contents quoted in the error


def check_folders(video_dir: Path, out_dir: Path) -> None:
    """Raise unless `video_dir` is a folder and `out_dir` lies outside it and is new, empty or
    a prepared folder: FolderArgumentError for a missing input and an output folder of other
    things, PipelineError for an output inside the input."""
    if not video_dir.is_dir():
        what = "does not exist" if not video_dir.exists() else "is not a folder"
        raise FolderArgumentError(f"input folder {video_dir} {what}; pass a folder of videos")
    source, target = video_dir.resolve(), out_dir.resolve()
    if target == source or source in target.parents:
        raise PipelineError(f"output folder {out_dir} is inside the input folder {video_dir}; "
                            f"choose an output folder outside it (prepare never writes into "
                            f"the folder it reads)")
    unrelated = OutputDir(out_dir).unrelated_entries()
    if unrelated:
        shown = ", ".join(unrelated[:_LISTED_ENTRIES])
        if len(unrelated) > _LISTED_ENTRIES:
            shown += f" and {len(unrelated) - _LISTED_ENTRIES} more"
        raise FolderArgumentError(
            f"output folder {out_dir} already holds other things ({shown}) and no "
            f"prepared data (shards/, stats/); pass a new or empty folder, so that shards are "
            f"not mixed into it")


def _check_fingerprints(out: OutputDir, fingerprint: Fingerprint) -> None:
    for unit in out.stats_units():
        raw, _ = out.read_stats(unit)
        if raw is None:
            continue  # unreadable: not done, prepared again
        differences = fingerprint.differences(raw)
        if differences:
            raise ConfigMismatchError(
                f"{out.root} was prepared with other settings ({unit_name(unit)}: "
                f"{'; '.join(differences)}); rerun with the settings it was made with to "
                f"resume, or pass --overwrite to delete its shards and start over",
                differences)


def _present_units(out: OutputDir) -> set[int]:
    """Unit numbers with any output (stats, shards, part files)."""
    found = set(out.stats_units())
    for folder in (out.shards, out.tmp):
        if folder.is_dir():
            for path in folder.iterdir():
                number = path.name[len("unit-"):len("unit-") + 6]
                if path.name.startswith("unit-") and number.isdigit():
                    found.add(int(number))
    return found


@dataclass
class _Run:
    """The prepare loop over this run's units; one instance per `prepare` call."""

    out: OutputDir
    fingerprint: Fingerprint
    options: RunOptions
    callbacks: PrepareCallbacks
    committed: dict[int, UnitStats] = field(default_factory=dict)

    def run(self, units: list[WorkUnit]) -> dict[int, UnitStats]:
        config = self.fingerprint.config
        token = secrets.token_hex(4)  # part files of an earlier, killed run never collide
        threads = self.options.threads or decoder_threads(self.options.workers)
        tasks: deque[VideoTask] = deque()
        slots: dict[str, tuple[int, int]] = {}  # rel_path -> (unit, position)
        outcomes: dict[int, list[VideoOutcome | None]] = {}
        by_index = {unit.index: unit for unit in units}
        for unit in units:
            self.out.unit_tmp(unit.index).mkdir(parents=True, exist_ok=True)
            outcomes[unit.index] = [None] * len(unit.sources)
            for position, source in enumerate(unit.sources):
                slots[source.rel_path] = (unit.index, position)
                part_path = self.out.unit_tmp(unit.index) / f"{position:04d}.{token}.tar"
                split = split_of(source.video_id, config.eval_fraction, config.split_seed)
                tasks.append(VideoTask(source, part_path, config,
                                       self.options.clip_encoding, threads, split))
        try:
            self._loop(tasks, slots, outcomes, by_index)
        except BaseException:
            # Interrupted, or the disk is full: the workers are gone; drop the part files of
            # the units left unfinished (a run killed outright leaves them to the next run).
            for unit in outcomes:
                shutil.rmtree(self.out.unit_tmp(unit), ignore_errors=True)
            raise
        return self.committed

    def _loop(self, tasks: deque[VideoTask], slots: dict[str, tuple[int, int]],
              outcomes: dict[int, list[VideoOutcome | None]],
              by_index: dict[int, WorkUnit]) -> None:
        total = len(tasks)
        done = clips = 0
        footage = 0.0
        with VideoRunner(self.options.workers, self.options.timeout_factor,
                         self.options.timeout_min_s) as runner:
            while tasks or runner.busy:
                while tasks and runner.free > 0:
                    runner.start(tasks.popleft())
                for outcome in runner.wait(POLL_INTERVAL_S):
                    done += 1
                    clips += outcome.clips
                    footage += outcome.footage_seconds
                    self.callbacks.on_video(outcome)
                    unit_index, position = slots[outcome.source]
                    outcomes[unit_index][position] = outcome
                    if all(item is not None for item in outcomes[unit_index]):
                        finished = [item for item in outcomes[unit_index] if item]
                        self._commit(by_index[unit_index], finished)
                        del outcomes[unit_index]
                running = runner.running()
                self.callbacks.on_progress(RunProgress(
                    total, done, clips + sum(r.clips for r in running),
                    footage + sum(r.decoded_seconds for r in running), running))

    def _commit(self, unit: WorkUnit, videos: list[VideoOutcome]) -> None:
        """Publish a finished unit: shards under their final names, then its stats file."""
        parts: dict[Split, list[PartFile]] = {split: [] for split in SPLITS}
        for video in videos:
            if video.part is not None:
                parts[video.split].append(video.part)
        try:
            shards = write_unit_shards(parts, self.out.root, unit.index,
                                       self.fingerprint.config.samples_per_shard)
            stats = UnitStats(unit.index, self.fingerprint.to_dict(), unit.rel_paths, videos,
                              shards, utc_now())
            self.out.write_stats(stats)
        except OSError as err:
            raise OutputError(f"cannot write the shards of {unit.name} to {self.out.root}: "
                              f"{err.strerror or err}") from err
        shutil.rmtree(self.out.unit_tmp(unit.index), ignore_errors=True)
        self.committed[unit.index] = stats


def prepare(video_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
            config: PrepareConfig | None = None, options: RunOptions | None = None,
            callbacks: PrepareCallbacks | None = None) -> PrepareResult:
    """Prepare every video under `video_dir` into shards in `out_dir` (see the module doc).

    Returns a `PrepareResult` once the units of `options.part` are done; failed videos are
    in it, not raised. Raises FolderArgumentError or PipelineError for unusable folders (see
    `check_folders`) or an empty input, FolderInUseError while another run prepares into
    `out_dir` (the same part of it), ConfigMismatchError when `out_dir` holds another
    configuration's units and `options.overwrite` is off, and OutputError when the output
    cannot be written."""
    started = time.monotonic()
    config = config if config is not None else PrepareConfig()
    options = options if options is not None else RunOptions()
    callbacks = callbacks if callbacks is not None else PrepareCallbacks()
    video_dir, out_dir = Path(video_dir), Path(out_dir)
    check_folders(video_dir, out_dir)
    start_forkserver()  # its imports overlap discovery and planning (the CLI starts it sooner)
    # Videos a symlink leads out of the input folder are planned too (and reported skipped),
    # so that the units do not depend on what the links point at.
    sources = discover_videos(video_dir, config.follow_symlinks, with_refused=True)
    if not sources:
        raise PipelineError(f"no videos under {video_dir} (looked for "
                            f"{' '.join(sorted(VIDEO_EXTENSIONS))}, any case, recursively)")
    out = OutputDir(out_dir)
    out.create()  # only empty folders: harmless while another run is at work
    # A whole run holds the folder alone; the parts of a job array share it, each holding its
    # own part alone.
    locks = [FolderLock(out.root, shared=options.part.count > 1)]
    if options.part.count > 1:
        locks.append(FolderLock(out.lock_folder(options.part)))
    try:
        for lock in locks:
            _acquire(lock, out_dir)
        return _prepare_locked(out, sources, config, options, callbacks, started)
    finally:
        for lock in locks:
            lock.release()


def _acquire(lock: FolderLock, out_dir: Path) -> None:
    try:
        lock.acquire()
    except OSError as err:  # a filesystem without locks (some network mounts)
        raise PipelineError(f"cannot lock the output folder {out_dir}: {err.strerror or err}; "
                            f"choose a folder on a filesystem with file locks") from err


def _prepare_locked(out: OutputDir, sources: list[VideoSource], config: PrepareConfig,
                    options: RunOptions, callbacks: PrepareCallbacks,
                    started: float) -> PrepareResult:
    """`prepare` from the work plan on, while the run holds its lock on the output folder."""
    units = plan_units(sources, config.videos_per_unit)
    fingerprint = Fingerprint(config, options.clip_encoding)
    part = options.part
    if options.overwrite and part.count == 1:
        out.clear_all()
    elif options.overwrite:
        out.manifest.unlink(missing_ok=True)
        for unit in out.stats_units():
            if part.owns(unit):
                out.clear_unit(unit)
    else:
        _check_fingerprints(out, fingerprint)

    stale = sorted(unit for unit in _present_units(out) if unit >= len(units))
    for unit in stale:
        out.clear_unit(unit)
    mine = select_part(units, part)
    done: dict[int, UnitStats] = {}
    todo: list[WorkUnit] = []
    for unit in mine:
        stats = out.is_done(unit, fingerprint)
        if stats is not None:
            done[unit.index] = stats
        else:
            todo.append(unit)
    for unit in todo:
        out.clear_unit(unit.index)
    if todo or stale:
        out.manifest.unlink(missing_ok=True)
    plan = RunPlan(len(sources), len(units), part, len(mine), len(done), len(todo),
                   sum(len(unit.sources) for unit in todo))
    callbacks.on_start(plan)

    try:
        done.update(_Run(out, fingerprint, options, callbacks).run(todo))
    except OutputError as err:
        message = (f"{err}. The run stopped; the units finished so far are kept: fix the cause "
                   f"(free some space) and rerun the same command to resume")
        raise OutputError(message) from err

    all_done = [stats for unit in units
                if (stats := done.get(unit.index) or out.is_done(unit, fingerprint)) is not None]
    missing = len(units) - len(all_done)
    manifest = write_manifest(out, fingerprint, all_done) if missing == 0 else None
    ordered = [done[unit.index] for unit in mine]
    return PrepareResult(
        out_dir=out.root, plan=plan, videos=[video for stats in ordered for video in stats.videos],
        shards=[shard for stats in ordered for shard in stats.shards], manifest=manifest,
        units_missing=missing, units_removed=len(stale), elapsed_s=time.monotonic() - started)
