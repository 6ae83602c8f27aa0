"""How `omni train` shows a run: live progress and log lines, then a summary table.

Kept apart from the command's options (`cli/train.py`) because it needs the trainer, and so
torch: `omni --help` builds every command's options and should not wait seconds for torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.progress import Progress
from rich.table import Table

from cli.console import console
from omnilatent.training import Trainer, TrainerCallbacks, TrainResult
from omnilatent.training.run_log import DROPPED_WARNING, dropped_share
from omnilatent.training.trainer import METRICS_FILE


class RichCallbacks(TrainerCallbacks):
    """Draws a progress bar and prints log records, checkpoints and events."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress = progress
        self.task_id = progress.add_task("training", total=total, loss="-", pair="-")
        self.records: list[dict[str, Any]] = []

    def on_start(self, trainer: Trainer) -> None:
        amp = trainer.amp_dtype
        console.print(
            f"model: {trainer.model.num_parameters() / 1e6:.2f}M parameters | device: "
            f"{trainer.device} | AMP: {'off' if amp is None else str(amp).replace('torch.', '')}"
            f" | gradient checkpointing: "
            f"{'on' if trainer.model.gradient_checkpointing else 'off'}"
        )
        self.progress.update(self.task_id, completed=trainer.step)

    def on_step(self, step: int, total: int, loss: float, task: str) -> None:
        self.progress.update(self.task_id, completed=step, loss=f"{loss:.4f}", pair=task)

    def on_log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        phase = f" | {record['phase']}" if "phase" in record else ""
        data = f" | {data_line(record['data'])}" if "data" in record else ""
        console.print(
            f"step {record['step']:>7}{phase} | loss {record['loss']:.4f} | "
            f"lr {record['lr']:.2e} | "
            f"{record['samples_per_s']:.1f} samples/s | {record['tokens_per_s']:.0f} tokens/s"
            f"{data}", soft_wrap=True
        )

    def on_eval(self, record: dict[str, Any]) -> None:
        console.print(f"[cyan]eval[/] step {record['step']} | {eval_line(record['eval'])}",
                      soft_wrap=True)

    def on_checkpoint(self, path: Path) -> None:
        console.print(f"[green]checkpoint[/] {path}")

    def on_event(self, message: str) -> None:
        console.print(f"[yellow]{message}[/]")


def data_line(counters: dict[str, int]) -> str:
    """The loader's counters: samples read and dropped, and any other loss that happened."""
    line = (f"data: {counters['samples']} samples, {counters['dropped']} dropped "
            f"({dropped_share(counters):.1%})")
    for name in ("unsafe_members", "corrupt_shards", "surplus_shards"):
        if counters[name]:
            line += f", {counters[name]} {name.replace('_', ' ')}"
    return line


def eval_line(metrics: dict[str, Any]) -> str:
    """The headline of an evaluation: retrieval R@1 beside chance, transcript accuracy."""
    parts = [f"{metrics['samples']} windows"]
    for name, m in metrics.get("retrieval", {}).items():
        parts.append(f"{name.replace('_to_', '->')} R@1 {m['r1']:.2f} ({m['chance_r1']:.2f})")
    for name, m in metrics.get("text", {}).items():
        parts.append(f"{name.replace('_to_', '->')} acc {m['token_accuracy']:.2f} "
                     f"CER {m['cer']:.2f}")
    return " | ".join(parts)


def print_summary(records: list[dict[str, Any]], save_dir: Path, result: TrainResult) -> None:
    table = Table(title=f"training summary: {result.step} steps")
    table.add_column("task")
    table.add_column("first logged loss", justify="right")
    table.add_column("last logged loss", justify="right")
    first: dict[str, tuple[int, float]] = {}
    last: dict[str, tuple[int, float]] = {}
    for record in records:
        for task, loss in record["losses"].items():
            first.setdefault(task, (record["step"], loss))
            last[task] = (record["step"], loss)
    for task in first:
        table.add_row(task, f"{first[task][1]:.4f} (step {first[task][0]})",
                      f"{last[task][1]:.4f} (step {last[task][0]})")
    if records:
        table.add_row("[bold]all (window mean)[/]", f"{records[0]['loss']:.4f} "
                      f"(step {records[0]['step']})",
                      f"{records[-1]['loss']:.4f} (step {records[-1]['step']})")
    console.print(table)
    if result.data is not None:
        warn = dropped_share(result.data) > DROPPED_WARNING
        console.print(("[yellow]warning:[/] " if warn else "") + data_line(result.data)
                      + (f": more than {DROPPED_WARNING:.0%} of the samples were dropped; check "
                         "the data with `omni inspect`" if warn else ""), soft_wrap=True)
    if result.interrupted:
        console.print("[yellow]interrupted: rerun with --resume auto to continue[/]")
    # paths on their own unwrapped lines, so they can be copied whatever the terminal width
    if result.last_checkpoint is not None:
        console.print(f"checkpoint: {result.last_checkpoint}", soft_wrap=True)
    console.print(f"metrics:    {save_dir / METRICS_FILE}", soft_wrap=True)
