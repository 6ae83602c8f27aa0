"""Checkpoint directories: written under a temporary name, renamed when complete, verified
on load.

Layout of ``SAVE_DIR/step-00000030/``:
  model.safetensors   model weights (hooks included)
  training.pt         optimizer, scheduler and GradScaler state (torch.load weights_only=True)
  tokenizer.model     the SentencePiece model, when the run used one (see inference/card.py)
  state.json          step, configs, card, RNG states, data position, and the size and
                      SHA-256 of every file above, so truncation or corruption is detected,
                      not loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from omnilatent.errors import CheckpointError

# 2: target decoder with position queries (replacing the sequence adapter), and a card.
FORMAT_VERSION = 2
MODEL_FILE = "model.safetensors"
TRAINING_FILE = "training.pt"
STATE_FILE = "state.json"
REQUIRED_FILES = frozenset({MODEL_FILE, TRAINING_FILE})
OPTIONAL_FILES = frozenset({"tokenizer.model"})
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    save_dir: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    training_state: dict[str, Any],
    state: dict[str, Any],
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write a complete checkpoint for ``step`` and return its final directory.

    ``extra_files`` (name in the checkpoint -> source, names from ``OPTIONAL_FILES``) are
    copied in and hashed like the rest. Everything goes into ``.tmp-step-…`` first; the
    directory is renamed only after every file is flushed, so a crash leaves either no
    checkpoint or a complete one.
    """
    save_dir.mkdir(parents=True, exist_ok=True)
    final = save_dir / step_dir_name(step)
    for stale in save_dir.glob(".tmp-step-*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    tmp = save_dir / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    tmp.mkdir()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
    save_file(tensors, str(tmp / MODEL_FILE))
    torch.save(training_state, tmp / TRAINING_FILE)
    extra = dict(extra_files or {})
    unknown = sorted(set(extra) - OPTIONAL_FILES)
    if unknown:
        raise CheckpointError(f"unknown checkpoint file name(s): {', '.join(unknown)}")
    for name, source in extra.items():
        shutil.copyfile(source, tmp / name)
    files = {}
    for name in (MODEL_FILE, TRAINING_FILE, *sorted(extra)):
        _fsync(tmp / name)
        files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
    full_state = {"format": FORMAT_VERSION, "step": step, **state, "files": files}
    (tmp / STATE_FILE).write_text(json.dumps(full_state, indent=1))
    _fsync(tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(save_dir)
    return final


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Return the checkpoint's state.json after checking every file; raise CheckpointError."""
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    state_path = path / STATE_FILE
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {STATE_FILE} is missing (partial checkpoint)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: {STATE_FILE} is not valid JSON ({exc})") from exc
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {state.get('format')!r} is not supported "
            f"(this omni reads format {FORMAT_VERSION}; the model changed since it was "
            "written: retrain, or use the omni version that wrote it)"
        )
    for name, meta in state.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing (partial checkpoint)")
        size = file.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(
                f"{path}: {name} has {size} bytes, state.json says {meta['bytes']} (truncated?)"
            )
        if _sha256(file) != meta["sha256"]:
            raise CheckpointError(f"{path}: {name} does not match its recorded SHA-256 (corrupt)")
    listed = set(state.get("files", {}))
    if not REQUIRED_FILES <= listed or not listed <= REQUIRED_FILES | OPTIONAL_FILES:
        raise CheckpointError(f"{path}: state.json must list {MODEL_FILE} and {TRAINING_FILE} "
                              f"(and optionally {', '.join(sorted(OPTIONAL_FILES))}), "
                              f"not {', '.join(sorted(listed)) or 'nothing'}")
    return state


@dataclass
class LoadedCheckpoint:
    path: Path
    state: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    training_state: dict[str, Any]


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Verify then load a checkpoint; tensors are loaded with ``weights_only=True``."""
    state = verify_checkpoint(path)
    try:
        model_state = load_file(str(path / MODEL_FILE))
        training_state = torch.load(path / TRAINING_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and torch raise many types for damaged files
        raise CheckpointError(f"{path}: cannot load ({type(exc).__name__}: {exc})") from exc
    return LoadedCheckpoint(path, state, model_state, training_state)


@dataclass
class CheckpointSearch:
    """The newest usable checkpoint (or None) and every newer one that was skipped, with why."""

    latest: Path | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def list_checkpoints(save_dir: Path) -> list[tuple[int, Path]]:
    """Complete-looking checkpoint directories (by name), newest first."""
    if not save_dir.is_dir():
        return []
    found = []
    for entry in save_dir.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found, reverse=True)


def find_latest_checkpoint(save_dir: Path) -> CheckpointSearch:
    """Newest checkpoint that verifies; corrupt or partial ones are reported, never loaded."""
    search = CheckpointSearch(latest=None)
    for _, path in list_checkpoints(save_dir):
        try:
            verify_checkpoint(path)
        except CheckpointError as exc:
            search.skipped.append((path, str(exc)))
            continue
        search.latest = path
        break
    return search


def prune_checkpoints(save_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (0 keeps all); return the removed."""
    if keep_last <= 0:
        return []
    removed = []
    for _, path in list_checkpoints(save_dir)[keep_last:]:
        shutil.rmtree(path)
        removed.append(path)
    return removed
