"""`omni inspect`: what a set of shards holds, whether every sample is sound, and previews.

The reading happens in `pipeline.inspect`; this module picks what to run from the options,
draws the progress bars and renders the results as tables or, with `--json`, as one JSON
document on stdout (nothing else is printed there; strict JSON: a NaN or infinity read from
a manifest or a sample is null). Exit statuses: README.md, "Inspecting shards"."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import DownloadColumn, TextColumn

from cli.console import console, count, human_bytes, live_bar, plain, print_not_prepared, table
from cli.errors import EXIT_ERROR, EXIT_USAGE, CLIError, run_command
from cli.options import Json
from pipeline.inspect.export import ExportedSample, SampleView, export_samples, list_samples
from pipeline.inspect.reader import ProgressFn
from pipeline.inspect.summary import Summary, summarize
from pipeline.inspect.target import Target, open_target
from pipeline.inspect.verify import VerifyResult, verify
from pipeline.prepare.processes import usable_cpus

EXAMPLES = """
[bold]Examples[/]

  Summarise a prepared folder: shards, samples, footage, member shapes, transcripts, failures:
    [cyan]omni inspect data/prepared[/]

  Read and check every sample against the schema and the manifest (exit 1 on any problem):
    [cyan]omni inspect data/prepared --verify[/]

  Print the first 10 samples with their times and transcripts:
    [cyan]omni inspect data/prepared --samples 10[/]

  Write frame, clip (GIF and contact sheet), mel image and transcript of 4 samples:
    [cyan]omni inspect data/prepared --export previews/[/]

  One shard, or a brace pattern (quoted, so that the shell leaves the braces alone):
    [cyan]omni inspect data/prepared/shards/unit-000000-000000.tar[/]
    [cyan]omni inspect 'data/prepared/shards/unit-{000000..000003}-000000.tar' --verify[/]

  Everything as one JSON document for scripts:
    [cyan]omni inspect data/prepared --verify --json > inspect.json[/]
"""

T = TypeVar("T")

DEFAULT_EXPORT = 4  # samples written by --export without --samples
PARALLEL_FROM = 2000  # --verify uses every CPU from this many samples on (else one process)
_MAX_LISTED = 20  # problems, failures and shards listed in the human output


def _with_bar(step: Callable[[ProgressFn | None], T], description: str, target: Target,
              show: bool) -> T:
    """`step(progress callback)` under a transient bar over the shards' bytes, or bare: the
    bytes read drive the bar, the samples read the rate."""
    if not show:
        return step(None)
    progress = live_bar("{task.description}", DownloadColumn(),
                        TextColumn("{task.fields[samples]} samples"),
                        TextColumn("{task.fields[rate]} samples/s"))
    with progress:
        task = progress.add_task(description, total=max(target.shard_bytes(), 1), samples=0,
                                 rate="-")

        def advance(samples: int, size: int) -> None:
            read = progress.tasks[task].fields["samples"] + samples
            elapsed = progress.tasks[task].elapsed or 0.0
            rate = f"{read / elapsed:.0f}" if elapsed > 0 else "-"
            progress.update(task, advance=size, samples=read, rate=rate)

        return step(advance)


def _strict_json(value: Any) -> Any:
    """`value` with every NaN and infinity replaced by None: strict JSON parsers reject them,
    and a manifest or a sample's json may hold them (Python's json module reads them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item) for item in value]
    return value


def _incomplete(summary: Summary) -> CLIError | None:
    """The error for a summary that read nothing or not everything, which must not pass for a
    clean one (exit 0 with a table of zeros); None when every shard was read."""
    damaged = [entry for entry in summary.shards if entry.error is not None]
    if damaged:
        return CLIError(f"{len(damaged)} of {count(len(summary.shards), 'shard')} missing or "
                        f"unreadable (listed above), so the numbers are incomplete",
                        hint="omni inspect reads the plain .tar shards omni prepare writes; "
                             "--verify says what is wrong with each")
    if summary.samples == 0:
        return CLIError(f"{summary.target.path} holds no samples",
                        hint="pass a folder written by omni prepare, or its .tar shards")
    return None


def _percent(part: int, whole: int) -> str:
    return "-" if whole == 0 else f"{100 * part / whole:.0f}% ({part}/{whole})"


def _seconds(value: float) -> str:
    seconds = f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return f"{value / 3600:.2f} h ({seconds} s)"


def _describe(target: Target) -> str:
    if target.kind != "directory":
        return count(len(target.shards), "shard")
    if target.manifest is None:
        return "prepared folder without manifest.json"
    created = f", written {plain(target.created)}" if target.created else ""
    return f"prepared folder (manifest{created})"


def _render_summary(summary: Summary) -> None:
    target = summary.target
    path = target.path if len(target.path) <= 100 else target.path[:99] + "…"
    console.print(f"[bold]{plain(path)}[/]: {_describe(target)}", soft_wrap=True)
    grid = table("inspect summary", show_header=False)
    shards = summary.shards
    damaged = [entry for entry in shards if entry.error is not None]
    grid.add_row("shards", f"{len(shards)} ({human_bytes(summary.shard_bytes)})"
                 + (f", [red]{len(damaged)} missing or unreadable[/]" if damaged else ""))
    samples = str(summary.samples)
    expected = summary.expected_samples
    if expected is not None:
        colour = "green" if expected == summary.samples else "red"
        samples += f" [{colour}](recorded: {plain(expected)})[/]"
    grid.add_row("samples", samples)
    videos = f"{summary.videos} with samples"
    totals = target.totals
    if totals is not None:
        videos += (f"; prepare saw {plain(totals.get('videos'))}: "
                   f"{plain(totals.get('prepared'))} prepared, "
                   f"[red]{plain(totals.get('failed'))} failed[/], "
                   f"[yellow]{plain(totals.get('skipped'))} skipped[/]")
    grid.add_row("videos", videos)
    for split, text in _splits(summary).items():
        grid.add_row(f"{plain(split)} split", text)
    if summary.footage_seconds is not None:
        grid.add_row("footage", f"{_seconds(summary.footage_seconds)} of prepared video")
    else:
        grid.add_row("footage", f"unknown without a manifest; the windows span "
                                f"{_seconds(summary.span_seconds)}")
    grid.add_row("clip-seconds", f"{summary.clip_seconds:.0f} s in {summary.samples} windows "
                                 f"(windows overlap, so this is not footage)")
    coverage = ", ".join(f"{plain(item.source)} {item.with_text}/{item.samples}"
                         for item in summary.transcripts)
    grid.add_row("transcripts", f"{_percent(summary.with_text, summary.samples)} of samples "
                                f"have text" + (f": {coverage}" if coverage else ""))
    grid.add_row("audio", f"{_percent(summary.with_audio, summary.samples)} of samples have "
                          f"an audio track")
    if summary.unreadable_meta:
        grid.add_row("unreadable", f"[red]{summary.unreadable_meta} samples have no readable "
                                   f"json or txt[/] (run --verify for details)")
    console.print(grid)

    if summary.members:
        members = table("members (first samples)", "member", "type", "dtype", "shape",
                        "mean size", right=("mean size",))
        for member in summary.members:
            kind = "[red]not read (unsafe or unknown type)[/]" if member.kind == "unread" \
                else member.kind
            shape = "" if member.shape is None else "(" + ", ".join(map(str, member.shape)) + ")"
            members.add_row(plain(member.name), kind, plain(member.dtype or ""), shape,
                            human_bytes(member.mean_bytes))
        console.print(members)
    if target.config is not None:
        config = {**target.config, "clip_encoding": target.clip_encoding}
        console.print("prepare config: " + " ".join(f"{plain(name)}={plain(value)}"
                                                    for name, value in config.items()),
                      soft_wrap=True)
    for entry in damaged[:_MAX_LISTED]:
        console.print(f"[red]shard {plain(entry.path)}:[/] {plain(entry.error or '')}",
                      soft_wrap=True)
    warnings = [(issue.source, issue.reason) for issue in target.issues
                if issue.status == "warning"]
    print_not_prepared("videos not prepared (recorded at prepare time)",
                       [(issue.source, issue.status, issue.reason) for issue in target.issues
                        if issue.status != "warning"],
                       warnings, f"{len(warnings)} prepare warning(s)", _MAX_LISTED)
    for note in target.notes:
        console.print(f"[yellow]note:[/] {plain(note)}", soft_wrap=True)


def _splits(summary: Summary) -> dict[str, str]:
    """Per split: samples, videos and shards found, next to what prepare recorded."""
    recorded_splits = summary.target.splits or {}
    described = {}
    for split, found in summary.splits.items():
        text = (f"{count(found.samples, 'sample')} of {count(found.videos, 'video')} in "
                f"{count(found.shards, 'shard')}")
        recorded = recorded_splits.get(split)
        if recorded is not None:
            colour = "green" if recorded.get("clips") == found.samples else "red"
            clips, videos = recorded.get("clips", 0), recorded.get("videos", 0)
            text += (f" [{colour}](recorded: {plain(count(clips, 'clip'))} of "
                     f"{plain(count(videos, 'video'))})[/]")
        described[split] = text
    return described


def _render_samples(views: list[SampleView]) -> None:
    listing = table(f"first {count(len(views), 'sample')}", "key", "source", "time (s)",
                    "audio", "transcript", fold=("key", "source", "transcript"))
    listing.columns[2].no_wrap = True
    for view in views:
        if view.source is None:
            listing.add_row(plain(view.key), "[red]json does not decode[/]", "", "", "")
            continue
        times = f"{view.start:.2f}–{view.end:.2f}"
        text = (plain(view.text) if view.text
                else f"[dim]({plain(view.transcript_source)}, empty)[/]")
        listing.add_row(plain(view.key), plain(view.source), times,
                        "yes" if view.has_audio else "[yellow]no[/]", text)
    console.print(listing)


def _render_verify(result: VerifyResult) -> None:
    scope = (f"{count(result.samples, 'sample')} in {count(result.shards, 'shard')} "
             f"({human_bytes(result.bytes)}) "
             f"read in {result.elapsed_s:.1f} s ({result.samples_per_s:.0f} samples/s)")
    if result.ok:
        console.print(f"verify: [bold green]OK[/], {scope}: every sample decodes and matches "
                      f"the schema and the recorded counts")
        return
    console.print(f"verify: [bold red]{result.problem_count} problem(s)[/], {scope}")
    listing = table("problems", "shard", "sample", "problem", fold=("shard", "sample", "problem"))
    for problem in result.problems[:_MAX_LISTED]:
        shard = Path(problem.shard).name if problem.shard else "(all)"
        listing.add_row(plain(shard), plain(problem.key or ""), plain(problem.message))
    console.print(listing)
    if result.problem_count > _MAX_LISTED:
        console.print(f"... and {result.problem_count - _MAX_LISTED} more (--json lists the "
                      f"first {len(result.problems)})")


def _render_export(exported: list[ExportedSample], folder: Path) -> None:
    written = sum(1 for item in exported if item.error is None)
    console.print(f"exported {written} sample(s) to {plain(folder)}:", soft_wrap=True)
    for item in exported:
        if item.error is not None:
            console.print(f"  [red]{plain(item.key)}: not exported[/]: {plain(item.error)}",
                          soft_wrap=True)
        else:
            stem = Path(item.files["txt"]).stem
            console.print(f"  {plain(stem)}.{{{','.join(item.files)}}}", soft_wrap=True)


def inspect_command(
    paths: Annotated[list[Path], typer.Argument(
        metavar="PATH", show_default=False,
        help="A folder written by omni prepare, or .tar shards and brace patterns "
             "(shards/unit-{000000..000003}-000000.tar).")],
    samples: Annotated[int | None, typer.Option(
        "--samples", min=0, show_default=False,
        help=f"Print the first K samples (key, source, times, transcript); with --export, "
             f"export K samples \\[default: {DEFAULT_EXPORT}].")] = None,
    verify_all: Annotated[bool, typer.Option(
        "--verify", help="Decode and check every sample against the schema and the "
                         "manifest; exit 1 on any problem.")] = False,
    export: Annotated[Path | None, typer.Option(
        "--export", metavar="DIR", show_default=False,
        help="Write frame PNG, clip GIF, contact sheet, mel PNG and transcript of the first "
             "samples to DIR.")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, show_default=False,
        help=f"Processes for --verify \\[default: CPU count from {PARALLEL_FROM} samples on, "
             f"else 1].")] = None,
    json_output: Json = False) -> None:
    """Show what prepared shards hold; check them; export samples to look at.

    The default summary reads the json and txt of every sample (the media members are skipped
    over) and decodes the first few samples for member dtypes and shapes."""

    def body() -> None:
        if len(paths) > 1 and any(path.is_dir() for path in paths):
            raise CLIError("a prepared folder is inspected on its own",
                           hint="pass the folder alone, or only shard files and patterns",
                           exit_code=EXIT_USAGE)
        if export is not None and export.exists() and not export.is_dir():
            raise CLIError(f"--export {export}: exists and is not a folder",
                           hint="pass a folder (it is created if missing)", exit_code=EXIT_USAGE)
        target = open_target(paths)
        show = not json_output  # human output is printed step by step, JSON once at the end
        summary = _with_bar(lambda bar: summarize(target, bar), "scan", target, show)
        document: dict[str, Any] = {"summary": summary.to_dict(), "samples": None,
                                    "verify": None, "export": None}
        if show:
            _render_summary(summary)
        if samples is not None:
            views = list_samples(target, samples)
            document["samples"] = [vars(view) for view in views]
            if show:
                _render_samples(views)
        result = None
        if verify_all:
            count = workers or (usable_cpus() if summary.samples >= PARALLEL_FROM else 1)
            result = _with_bar(lambda bar: verify(target, count, bar), "verify", target, show)
            document["verify"] = result.to_dict()
            if show:
                _render_verify(result)
        if export is not None:
            exported = export_samples(target, export,
                                      DEFAULT_EXPORT if samples is None else samples)
            document["export"] = {"dir": str(export), "samples": [vars(e) for e in exported]}
            if show:
                _render_export(exported, export)
        if json_output:
            console.out(json.dumps(_strict_json(document), ensure_ascii=True, allow_nan=False),
                        highlight=False)
        if result is not None and not result.ok:
            raise typer.Exit(EXIT_ERROR)
        incomplete = _incomplete(summary)
        if incomplete is not None:
            if json_output:  # the document says it; stdout holds nothing else
                raise typer.Exit(EXIT_ERROR)
            raise incomplete

    run_command(body)
