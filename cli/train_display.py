"""How `omni train` shows a run: live progress and log lines, then a summary table.

Kept apart from the command's options (`cli/train.py`) because it needs the trainer, and so
torch: `omni --help` builds every command's options and should not wait seconds for torch."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

from rich.progress import MofNCompleteColumn, Progress, TextColumn

from cli.console import console, live_bar, plain, table
from omnilatent.training import Trainer, TrainerCallbacks, TrainResult
from omnilatent.training.run_log import DROPPED_WARNING, dropped_share
from omnilatent.training.trainer import METRICS_FILE

RATE_STEPS = 20  # steps/s is measured over the last this many steps


def progress_bar() -> Progress:
    """The live bar: what the run is doing (its phase, or what it waits for before the first
    step), a smoothed loss, steps/s and samples/s."""
    return live_bar("train", MofNCompleteColumn(), TextColumn(
        "{task.fields[status]} | loss {task.fields[loss]} | "
        "{task.fields[steps_per_s]} steps/s | {task.fields[samples_per_s]} samples/s"))


class RichCallbacks(TrainerCallbacks):
    """Draws a progress bar and prints log records, checkpoints and events.

    The bar's loss is the latest record's: the mean of the last ``log_interval`` steps (one
    step's loss is that of a single task, and tasks alternate: it jumped 2.76 -> 0.23 -> 2.24
    between text and picture targets), read at log intervals, as the trainer reads losses.
    ``samples_per_step`` (batch size x accumulation) turns steps/s into samples/s. Every line
    is printed unwrapped, so piped logs keep one record a line whatever the width."""

    def __init__(self, progress: Progress, total: int, samples_per_step: int) -> None:
        self.progress = progress
        self.samples_per_step = samples_per_step
        self.task_id = progress.add_task("training", total=total, status="starting",
                                         loss="-", steps_per_s="-", samples_per_s="-")
        self.records: list[dict[str, Any]] = []
        self.trainer: Trainer | None = None
        self._times: deque[float] = deque(maxlen=RATE_STEPS + 1)

    def on_start(self, trainer: Trainer) -> None:
        self.trainer = trainer
        amp = trainer.amp_dtype
        console.print(f"model: {trainer.model.num_parameters() / 1e6:.2f}M parameters | device: "
                      f"{trainer.device} | AMP: "
                      f"{'off' if amp is None else str(amp).replace('torch.', '')} | gradient "
                      f"checkpointing: {'on' if trainer.model.gradient_checkpointing else 'off'}",
                      soft_wrap=True)
        status = "first step: loading data" + (
            ", compiling the model" if trainer.config.compile else "")
        self.progress.update(self.task_id, completed=trainer.step, status=status + "…")

    def on_step(self, step: int, total: int, task: str) -> None:
        self._times.append(time.perf_counter())
        fields: dict[str, str] = {}
        if len(self._times) > 1:
            rate = (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)
            fields["steps_per_s"] = f"{rate:.2f}"
            fields["samples_per_s"] = f"{rate * self.samples_per_step:.1f}"
        trainer = self.trainer
        phase = None if trainer is None else trainer.sampler.log_fields(trainer.step).get("phase")
        self.progress.update(self.task_id, completed=step, status=plain(phase or task), **fields)

    def on_log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.progress.update(self.task_id, loss=f"{record['loss']:.4f}")
        phase = f" | {plain(record['phase'])}" if "phase" in record else ""
        data = f" | {data_line(record['data'])}" if "data" in record else ""
        console.print(f"step {record['step']:>7}{phase} | loss {record['loss']:.4f} | "
                      f"lr {record['lr']:.2e} | {record['samples_per_s']:.1f} samples/s | "
                      f"{record['tokens_per_s']:.0f} tokens/s{data}", soft_wrap=True)

    def on_eval(self, record: dict[str, Any]) -> None:
        console.print(f"[cyan]eval[/] step {record['step']} | {eval_line(record['eval'])}",
                      soft_wrap=True)

    def on_checkpoint(self, path: Path) -> None:
        console.print(f"[green]checkpoint[/] {plain(path)}", soft_wrap=True)

    def on_event(self, message: str) -> None:
        console.print(f"[yellow]{plain(message)}[/]", soft_wrap=True)


def data_line(counters: dict[str, int]) -> str:
    """The loader's counters: samples read and dropped, and any other loss that happened."""
    line = (f"data: {counters['samples']} samples, {counters['dropped']} dropped "
            f"({dropped_share(counters):.1%})")
    for name in ("unsafe_members", "corrupt_shards", "surplus_shards"):
        if counters[name]:
            line += f", {counters[name]} {name.replace('_', ' ')}"
    return line


def eval_line(metrics: dict[str, Any]) -> str:
    """The headline of an evaluation, each figure saying what it ranks: retrieval R@1 by
    class (with `--label-pattern`) and of the window itself, beside chance; transcript
    accuracy and character error rate."""
    parts = [f"{metrics['samples']} windows"]
    by_label = metrics.get("retrieval_by_label", {})
    for name, m in metrics.get("retrieval", {}).items():
        figures = [f"{m['r1']:.2f} of the window itself (chance {m['chance_r1']:.2f})"]
        if name in by_label:
            c = by_label[name]
            figures.insert(0, f"{c['r1']:.2f} by class (chance {c['chance_r1']:.2f})")
        parts.append(f"{name} R@1 " + ", ".join(figures))
    for name, m in metrics.get("text", {}).items():
        parts.append(f"{name} token acc {m['token_accuracy']:.2f} CER {m['cer']:.2f}")
    return " | ".join(parts)


def print_summary(records: list[dict[str, Any]], save_dir: Path, result: TrainResult) -> None:
    losses = ("first logged loss", "last logged loss")
    listing = table(f"training summary: {result.step} steps", "task", *losses, right=losses)
    first: dict[str, tuple[int, float]] = {}
    last: dict[str, tuple[int, float]] = {}
    for record in records:
        for task, loss in record["losses"].items():
            first.setdefault(task, (record["step"], loss))
            last[task] = (record["step"], loss)
    for task in first:
        # a task logged in one window only has no second loss to compare: say so, rather
        # than repeat the first (which reads as "nothing learned")
        once = first[task][0] == last[task][0]
        listing.add_row(task, f"{first[task][1]:.4f} (step {first[task][0]})",
                        "[dim]logged once[/]" if once
                        else f"{last[task][1]:.4f} (step {last[task][0]})")
    # One mean row per phase: later phases add tasks with other loss scales (text joins), so
    # a mean over the whole run would rise where nothing diverged.
    by_phase: dict[str | None, list[dict[str, Any]]] = {}
    for record in records:
        by_phase.setdefault(record.get("phase"), []).append(record)
    for phase, logged in by_phase.items():
        name = "all" if phase is None else f"phase {phase}"
        listing.add_row(f"[bold]{plain(name)} (window mean)[/]",
                        f"{logged[0]['loss']:.4f} (step {logged[0]['step']})",
                        f"{logged[-1]['loss']:.4f} (step {logged[-1]['step']})")
    console.print(listing)
    if result.data is not None:
        warn = dropped_share(result.data) > DROPPED_WARNING
        console.print(("[yellow]warning:[/] " if warn else "") + data_line(result.data)
                      + (f": more than {DROPPED_WARNING:.0%} of the samples were dropped; check "
                         "the data with `omni inspect`" if warn else ""), soft_wrap=True)
    if result.interrupted:
        console.print("[yellow]interrupted: rerun with --resume auto to continue[/]",
                      soft_wrap=True)
    # paths on their own unwrapped lines, so they can be copied whatever the terminal width
    if result.last_checkpoint is not None:
        console.print(f"checkpoint: {plain(result.last_checkpoint)}", soft_wrap=True)
    console.print(f"metrics:    {plain(save_dir / METRICS_FILE)}", soft_wrap=True)
