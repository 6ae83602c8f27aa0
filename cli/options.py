"""Option aliases shared by several commands (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Seed = Annotated[int, typer.Option("--seed", help="Seed for weights, data order and tasks.")]
Workers = Annotated[
    int, typer.Option("--workers", min=0, help="Data loader worker processes (0 = in-process).")]
SaveDir = Annotated[Path, typer.Option("--save-dir", help="Checkpoints and metrics.jsonl go here.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Hooks = Annotated[list[Path] | None,
                  typer.Option("--hook", help="A saved Latent Neural Hook folder (hook.json + "
                               "hook.safetensors) to register first; repeat for several.")]
Threads = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="CPU threads torch computes with (default: the cores "
                 "not busy with other work when the command starts; OMP_NUM_THREADS also sets "
                 "it).")]
