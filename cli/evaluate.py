"""`omni eval`: measure a checkpoint on held-out shards (losses, retrieval, text, reconstruction).

The measuring happens in `omnilatent.evaluation`; this module loads the checkpoint, draws the
progress bar and renders the metrics as tables or, with `--json`, as one JSON document on stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import MofNCompleteColumn, TextColumn

from cli.console import console, live_bar, plain, table
from cli.errors import EXIT_USAGE, CLIError, run_command
from cli.options import Device, Hooks, Json, Threads
from omnilatent.errors import UsageError

EXAMPLES = """
[bold]Examples[/]

  Evaluate the newest checkpoint of a run on the held-out split of a prepared folder:
    [cyan]omni eval runs/tiny demo-out/shards[/]

  One checkpoint, on a folder prepared from unseen videos, as JSON for scripts:
    [cyan]omni eval runs/tiny/step-00000600 world/eval-shards --json > eval.json[/]

  Also count retrieval by class (the first group of a pattern on each window's source
  path) and keep every generated transcript:
    [cyan]omni eval runs/tiny world/eval-shards --label-pattern '^([a-z]+-[a-z]+)_' \\
      --captions captions.jsonl[/]
"""

SPLITS = ("auto", "eval", "train", "all")
_SHOWN_CAPTIONS = 3
_RETRIEVAL = ("R@1", "chance", "R@5", "chance", "median rank", "chance")


def _render(metrics: dict[str, Any], captions: dict[str, list[Any]]) -> None:
    console.print(f"{metrics['samples']} windows evaluated")
    tasks = table("task losses (lower is better)", "task", "loss", right=("loss",))
    for name, value in metrics["tasks"].items():
        tasks.add_row(name, f"{value['loss']:.4f}")
    console.print(tasks)
    for key, title in (("retrieval", "retrieval: the query's own window"),
                       ("retrieval_by_label", "retrieval: any window of the query's label")):
        if key not in metrics:
            continue
        listing = table(title, "task", *_RETRIEVAL, right=_RETRIEVAL)
        for name, m in metrics[key].items():
            listing.add_row(name, f"{m['r1']:.3f}", f"[dim]{m['chance_r1']:.3f}[/]",
                          f"{m['r5']:.3f}", f"[dim]{m['chance_r5']:.3f}[/]",
                            f"{m['median_rank']:g}", f"[dim]{m['chance_median_rank']:.1f}[/]")
        console.print(listing)
    if metrics["text"]:
        text = ("token accuracy", "CER", "tokens")
        listing = table("transcripts (greedy, windows with text)", "task", *text, right=text)
        for name, m in metrics["text"].items():
            listing.add_row(name, f"{m['token_accuracy']:.3f}", f"{m['cer']:.3f}", str(m["tokens"]))
        console.print(listing)
        for name, rows in captions.items():
            for caption in rows[:_SHOWN_CAPTIONS]:
                console.print(f"[dim]{name}[/] {plain(repr(caption.reference))} -> "
                              f"{plain(repr(caption.generated))}", soft_wrap=True)
    else:
        console.print("[yellow]no window has transcript text: no text metrics[/]")
    listing = table("reconstruction", "modality", "metric", "value", right=("value",))
    for modality, values in metrics["reconstruction"].items():
        for name, value in values.items():
            unit = " dB" if name == "psnr" else " (log-mel)"
            listing.add_row(modality, name, f"{value:.3f}{unit}")
    console.print(listing)


def eval_command(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint folder (SAVE_DIR/step-N) or "
                                               "a save dir (its newest complete checkpoint).")],
    shards: Annotated[str, typer.Argument(help="A folder written by `omni prepare`, a shard, "
                                          "or a brace pattern.")],
    split: Annotated[str, typer.Option(
        "--split", help="auto: the folder's eval split if it has one, else every shard; or "
        "eval, train, all.")] = "auto",
    samples: Annotated[int | None, typer.Option(
        "--samples", min=1, help="Evaluate at most this many windows (default: all).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    label_pattern: Annotated[str | None, typer.Option(
        "--label-pattern", help="Regex (RE2: linear time, no backreferences or lookaround) "
        "on each window's source path; its first group is a class label, and retrieval is "
        "also counted by label.")] = None,
    captions: Annotated[Path | None, typer.Option(
        "--captions", help="Write every generated transcript to this JSONL file.")] = None,
    hooks: Hooks = None,
    device: Device = "auto",
    threads: Threads = None,
    json_output: Json = False) -> None:
    """Evaluate a trained checkpoint: per-task loss, cross-modal retrieval (R@1, R@5, median
    rank, beside chance), transcripts from video, audio and image (token accuracy, character
    error rate), and reconstruction (PSNR, mel L1). The checkpoint carries its model config,
    tokenizer and data sizes, so nothing else is needed."""

    def body() -> None:
        from omnilatent.evaluation.evaluate import (
            check_shards_fit,
            eval_loader,
            evaluate,
            held_out_split,
            source_labeller,
        )
        from omnilatent.inference.trained import load_trained
        from omnilatent.threads import configure_threads
        from omnilatent.training.trainer import resolve_device
        from pipeline.generate.outputs import atomic_output, check_output_file

        if split not in SPLITS:
            raise CLIError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}",
                           exit_code=EXIT_USAGE)
        chosen = held_out_split(shards) if split == "auto" else (None if split == "all" else split)
        try:
            labels = None if label_pattern is None else source_labeller(label_pattern)
        except UsageError as exc:  # the pattern itself; a window it misses is no usage error
            raise CLIError(str(exc), hint=exc.hint, exit_code=EXIT_USAGE) from None
        configure_threads(threads)
        if captions is not None:  # refused now, not after the whole evaluation
            check_output_file(captions)
        trained = load_trained(checkpoint, resolve_device(device), hooks or [])
        total = sum(check_shards_fit(shards, chosen, trained.model).sample_counts.values())
        total = total or None  # shards named without a manifest: count unknown
        if samples is not None:
            total = min(total, samples) if total else samples
        if not json_output:
            console.print(f"checkpoint {plain(trained.path)} (step {trained.step}, "
                          f"{trained.model.num_parameters() / 1e6:.2f}M parameters) on "
                          f"{plain(shards)} "
                          f"({'all shards' if chosen is None else chosen + ' split'})",
                          soft_wrap=True)
        loader = eval_loader(shards, trained.text, trained.card.max_text_len, batch_size, chosen)
        progress = live_bar("eval", MofNCompleteColumn(), TextColumn("windows"),
                            remaining=False, disable=json_output)
        with progress:
            bar = progress.add_task("eval", total=total)
            report = evaluate(trained.model, loader, trained.text, max_samples=samples,
                              labels=labels,
                              progress=lambda done: progress.update(bar, completed=done))
        if captions is not None:
            with atomic_output(captions) as handle:
                for task, rows in report.captions.items():
                    for row in rows:
                        line = json.dumps({"task": task, "key": row.key, "source": row.source,
                                           "reference": row.reference,
                                           "generated": row.generated})
                        handle.write((line + "\n").encode("utf-8"))
        if json_output:
            document = {"checkpoint": str(trained.path), "step": trained.step,
                        "split": chosen or "all", **report.metrics}
            console.out(json.dumps(document, ensure_ascii=True), highlight=False)
        else:
            _render(report.metrics, report.captions)

    run_command(body)
