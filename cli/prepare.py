"""`omni prepare`: a folder of videos -> WebDataset shards, with live progress and a summary.

The work happens in `pipeline.prepare`; this module turns options into its configs, draws the
progress bar, and renders the result as tables or, with `--json`, as one JSON document on
stdout (nothing else is printed there). Exit statuses: README.md, "Preparing videos" (Output)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, TaskID, TextColumn

from cli.console import console, count, human_bytes, live_bar, plain, print_not_prepared, table
from cli.errors import EXIT_ERROR, EXIT_USAGE, CLIError, run_command
from cli.options import Json
from pipeline.config import DECODERS, PrepareConfig
from pipeline.errors import ConfigError
from pipeline.prepare.plan import Part
from pipeline.prepare.processes import usable_cpus
from pipeline.prepare.run import (
    FolderArgumentError,
    PrepareCallbacks,
    PrepareResult,
    RunOptions,
    RunPlan,
    RunProgress,
    prepare,
)
from pipeline.shards.outcome import FAILED, SKIPPED, VideoOutcome
from pipeline.shards.split import EVAL

EXAMPLES = """
[bold]Examples[/]

  Prepare a folder of videos with the default clips (2 s every 1 s, 8 fps, 112/224 px):
    [cyan]omni prepare ~/videos data/prepared[/]

  Rerun after an interruption: finished units are skipped, the rest is redone:
    [cyan]omni prepare ~/videos data/prepared[/]

  Split a corpus over a Slurm job array of 8 tasks (each prepares every 8th unit):
    [cyan]omni prepare /corpus /scratch/prepared --part $((SLURM_ARRAY_TASK_ID + 1))/8[/]

  Hold out 10% of the videos (all their clips) as an eval split, in shards of their own:
    [cyan]omni prepare ~/videos data/prepared --eval-fraction 0.1 --split-seed 0[/]

  Start over with 4 s clips, and fail the job if any video failed:
    [cyan]omni prepare ~/videos data/prepared --clip-duration 4 --overwrite --strict[/]

  Machine-readable summary for scripts:
    [cyan]omni prepare ~/videos data/prepared --json > summary.json[/]
"""

_DEFAULTS = PrepareConfig()
_MAX_LISTED = 50  # failed/skipped videos and warnings listed in the summary


class _ProgressBar(PrepareCallbacks):
    """The live display: a bar over videos (running ones count by their decoded share),
    clips, footage seconds decoded per second, ETA; failures printed as they happen."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def on_start(self, plan: RunPlan) -> None:
        done = f", {plan.units_done} already done (skipped)" if plan.units_done else ""
        part = f" (part {plan.part})" if plan.part.count > 1 else ""
        console.print(f"{count(plan.videos, 'video')} in {count(plan.units, 'unit')}{part}: "
                      f"{plan.units_todo} to prepare{done}")
        self.task = self.progress.add_task("prepare", total=max(plan.videos_todo, 1),
                                           videos=f"0/{plan.videos_todo}", clips=0, rate="-")

    def on_progress(self, progress: RunProgress) -> None:
        if self.task is None:
            return
        running_share = sum(min(1.0, run.decoded_seconds / run.duration_hint)
                            for run in progress.running if run.duration_hint)
        elapsed = self.progress.tasks[self.task].elapsed or 0.0
        rate = f"{progress.footage_seconds / elapsed:.1f}" if elapsed > 0 else "-"
        self.progress.update(self.task, completed=progress.videos_done + running_share,
                             videos=f"{progress.videos_done}/{progress.videos_todo}",
                             clips=progress.clips, rate=rate)

    def on_video(self, outcome: VideoOutcome) -> None:
        if outcome.status == FAILED:
            self.progress.console.print(f"[red]failed[/] {plain(outcome.source)}: "
                                        f"{plain(outcome.reason or '')}")


def _summary(result: PrepareResult, eval_fraction: float) -> None:
    totals, plan = result.totals, result.plan
    grid = table("prepare summary", show_header=False)
    scope = f"part {plan.part}" if plan.part.count > 1 else "total"
    grid.add_row("videos", f"{totals.videos} in {scope}: "
                 f"[green]{totals.prepared} prepared[/], [red]{totals.failed} failed[/], "
                 f"[yellow]{totals.skipped} skipped[/]")
    grid.add_row("clips", f"{totals.clips}")
    damaged = [video for video in result.videos if video.decode_errors]
    if damaged:
        errors = sum(video.decode_errors for video in damaged)
        grid.add_row("decode errors", f"[yellow]{errors} in {count(len(damaged), 'video')}[/]"
                     " (prepared anyway; see the warnings)")
    held_out = result.splits[EVAL]
    if eval_fraction > 0:
        grid.add_row("eval split", f"{count(held_out.videos, 'video')} ({held_out.prepared} "
                     f"prepared), {count(held_out.clips, 'clip')} in "
                     f"{count(held_out.shards, 'shard')} (--eval-fraction "
                     f"{eval_fraction:g}); training never sees them")
    else:
        grid.add_row("eval split", "none (--eval-fraction 0): training sees every video")
    grid.add_row("footage", f"{totals.footage_seconds / 3600:.2f} h "
                 f"({totals.footage_seconds:.0f} s)")
    grid.add_row("shards", f"{totals.shards} ({human_bytes(totals.bytes)})")
    units = f"{plan.units_in_part} of {plan.units}: {plan.units_todo} prepared now"
    if plan.units_done:
        units += f", {plan.units_done} already done (skipped)"
    grid.add_row("units", units)
    if result.units_removed:
        grid.add_row("removed", f"{result.units_removed} stale units no longer in the input")
    grid.add_row("time", f"{result.elapsed_s:.1f} s")
    console.print(grid)
    if eval_fraction > 0 and totals.prepared and not held_out.prepared:
        # A hash threshold holds out each video with probability eval_fraction: a small corpus
        # may get none at all (10 videos at 0.05: 60 % of the time).
        console.print(f"[yellow]warning:[/] the eval split holds no prepared video: "
                      f"--eval-fraction {eval_fraction:g} of "
                      f"{count(totals.prepared, 'prepared video')} holds out "
                      f"{eval_fraction * totals.prepared:.2g} on average; pass a larger "
                      f"--eval-fraction (with --overwrite) to evaluate on held-out videos",
                      soft_wrap=True)

    warnings = [(video.source, text) for video in result.videos for text in video.warnings]
    print_not_prepared("not prepared", [(video.source, video.status, video.reason or "")
                                        for video in result.videos
                                        if video.status in (FAILED, SKIPPED)],
                       warnings, count(len(warnings), "warning"), _MAX_LISTED)
    # paths on their own unwrapped lines, so they can be copied whatever the terminal width
    if result.manifest is not None:
        console.print(f"manifest: {plain(result.manifest)}", soft_wrap=True)
    else:
        console.print(f"manifest: not yet written, {result.units_missing} units of other parts "
                      f"are still missing (it is written by the last part to finish)",
                      soft_wrap=True)


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    """SIGTERM (a job scheduler's cancel) stops like Ctrl-C: workers are killed, finished
    units are kept, and a rerun resumes."""
    raise KeyboardInterrupt


def prepare_command(
    video_dir: Annotated[Path, typer.Argument(help="Folder of videos (searched recursively).",
                                              show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="Output folder for shards/, stats/ and "
                                            "manifest.json (created if missing).",
                                            show_default=False)],
    clip_duration: Annotated[float, typer.Option("--clip-duration", help="Seconds per clip.")]
    = _DEFAULTS.clip_duration,
    clip_stride: Annotated[float, typer.Option("--clip-stride",
                                               help="Seconds between clip starts.")]
    = _DEFAULTS.clip_stride,
    fps: Annotated[int, typer.Option("--fps", help="Video frames per second in a clip.")]
    = _DEFAULTS.fps,
    frame_size: Annotated[int, typer.Option("--frame-size", help="Side of the clip frames "
                                            "(video modality), pixels.")]
    = _DEFAULTS.video_size,
    image_size: Annotated[int, typer.Option("--image-size", help="Side of the middle frame "
                                            "(image modality), pixels.")]
    = _DEFAULTS.image_size,
    sample_rate: Annotated[int, typer.Option("--sample-rate", help="Audio sample rate, Hz.")]
    = _DEFAULTS.sample_rate,
    n_mels: Annotated[int, typer.Option("--n-mels", help="Mel bins of the audio features.")]
    = _DEFAULTS.n_mels,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, show_default=False,
        help="Videos prepared in parallel, one process each \\[default: CPU count].")] = None,
    decoder_threads: Annotated[int | None, typer.Option(
        "--decoder-threads", min=1, show_default=False,
        help="Video decoder threads per worker; with 1, a worker runs on one thread "
             "(encoding in line), else it encodes in a thread beside the decoder's "
             "\\[default: the CPUs shared out among the workers, plus one when a worker gets "
             "several].")] = None,
    decoder: Annotated[str, typer.Option("--decoder", help=f"Decode backend: "
                                         f"{' or '.join(DECODERS)}.")] = _DEFAULTS.decoder,
    samples_per_shard: Annotated[int, typer.Option("--samples-per-shard", min=1,
                                                   help="Samples (clips) per shard file.")]
    = _DEFAULTS.samples_per_shard,
    videos_per_unit: Annotated[int, typer.Option(
        "--videos-per-unit", min=1,
        help="Videos per work unit, the grain of resume and of --part.")]
    = _DEFAULTS.videos_per_unit,
    eval_fraction: Annotated[float, typer.Option(
        "--eval-fraction",
        help="Share of the videos held out as the eval split, in [0, 1): all clips of a video "
             "go to unit-NNNNNN-eval-SSSSSS.tar shards, which training skips; 0: no eval split.")]
    = _DEFAULTS.eval_fraction,
    split_seed: Annotated[int, typer.Option(
        "--split-seed", help="Seed of the eval split (a video's split is a hash of this seed "
                             "and its id, so it never changes as videos are added).")]
    = _DEFAULTS.split_seed,
    part: Annotated[str, typer.Option("--part", help="Prepare only part I of N: every N-th "
                                      "unit, starting with unit I-1 (for job arrays).")]
    = "1/1",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete what OUT_DIR holds "
                                            "from an earlier run with other settings (with "
                                            "--part: only that part's units).")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit non-zero if any video "
                                         "failed.")] = False,
    follow_symlinks: Annotated[bool, typer.Option(
        "--follow-symlinks",
        help="Read videos and transcripts that symlinks lead to outside VIDEO_DIR; without "
             "it they are skipped with a warning, so a link cannot pull a private file into "
             "the shards.")] = _DEFAULTS.follow_symlinks,
    json_output: Json = False) -> None:
    """Turn a folder of videos into time-aligned WebDataset shards.

    Each video is cut into clips of --clip-duration seconds every --clip-stride seconds; each
    clip becomes one sample with its frames, middle image, log-mel audio and the transcript
    text that overlaps it (from .srt/.vtt/.txt sidecars or embedded subtitles). Broken videos
    fail alone and are listed; rerunning resumes where a run stopped."""

    def body() -> None:
        try:
            config = PrepareConfig(
                clip_duration=clip_duration, clip_stride=clip_stride, fps=fps,
                video_size=frame_size, image_size=image_size, sample_rate=sample_rate,
                n_mels=n_mels, samples_per_shard=samples_per_shard,
                videos_per_unit=videos_per_unit, decoder=decoder, eval_fraction=eval_fraction,
                split_seed=split_seed, follow_symlinks=follow_symlinks)
            options = RunOptions(workers=workers or usable_cpus(), part=Part.parse(part),
                                 overwrite=overwrite, threads=decoder_threads)
        except ConfigError as err:
            raise CLIError(str(err), hint="see omni prepare --help", exit_code=EXIT_USAGE) from err
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
        try:
            if json_output:
                result = prepare(video_dir, out_dir, config, options)
            else:
                progress = live_bar("prepare", TextColumn("{task.fields[videos]} videos"),
                                    TextColumn("{task.fields[clips]} clips"),
                                    TextColumn("{task.fields[rate]} footage-s/s"))
                with progress:
                    result = prepare(video_dir, out_dir, config, options, _ProgressBar(progress))
        except FolderArgumentError as err:
            raise CLIError(str(err), hint="see omni prepare --help", exit_code=EXIT_USAGE) from err
        except KeyboardInterrupt:
            raise CLIError("interrupted: the units finished so far are kept",
                           hint="rerun the same command to resume", exit_code=130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        if json_output:
            console.out(json.dumps(result.to_dict(), ensure_ascii=True), highlight=False)
        else:
            _summary(result, config.eval_fraction)
        if strict and result.totals.failed:
            if not json_output:
                console.print(f"[bold red]--strict:[/] {result.totals.failed} video(s) failed")
            raise typer.Exit(EXIT_ERROR)

    run_command(body)
