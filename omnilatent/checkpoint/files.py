"""Checkpoint directories: written under a temporary name, renamed when complete, verified
on load; pruning deletes only verified checkpoints older than the ones it keeps.

Layout of ``SAVE_DIR/step-00000030/``:
  model.safetensors   model weights (hooks included)
  training.pt         optimizer, scheduler and GradScaler state (torch.load weights_only=True)
  tokenizer.model     the SentencePiece model, when the run used one (see checkpoint/card.py)
  state.json          format, step, the trainer's parts (`omnilatent.training.checkpointer`),
                      the size and SHA-256 of every file above (the manifest, written with
                      them), so truncation or corruption is detected, not loaded, and
                      ``state_sha256``: the SHA-256 of state.json's own canonical JSON
                      without that key, so a hand-edited or damaged state.json is refused
                      with a reason instead of crashing a resume half-way.

A sharded checkpoint (format 5, written under ``--fsdp``) holds ``shards/`` instead of
model.safetensors: one safetensors file per rank with its shards of the model and optimizer
(`omnilatent.checkpoint.sharded`); training.pt then keeps the optimizer's param groups, and the
manifest lists every rank's file. Format 4 renamed the sampler's key; format 3 added
``state_sha256``; format 2 checkpoints (the same layout, written before it) are still read,
their state.json checked against the schema only."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from omnilatent.checkpoint.json_values import is_int
from omnilatent.checkpoint.sharded import SHARD_DIR, read_weights
from omnilatent.errors import CheckpointError
from omnilatent.model.weights_file import load_checked

# 2: target decoder with position queries (replacing the sequence adapter), and a card.
# 3: state.json carries state_sha256 (same layout, so format 2 is still read).
# 4: the task sampler's state is "sampler" (format 3's "pair_sampler" and a curriculum's
#    "extra" are converted on read: `omnilatent.training.checkpointer.upgrade`).
# 5: sharded (FSDP): shards/ instead of model.safetensors; unsharded checkpoints stay 4.
FORMAT_VERSION = 4
SHARDED_FORMAT = 5
READABLE_FORMATS = (2, 3, 4, 5)
MAX_STEP = 99_999_999  # the folder name holds 8 digits
MODEL_FILE = "model.safetensors"
TRAINING_FILE = "training.pt"
STATE_FILE = "state.json"
STATE_HASH_KEY = "state_sha256"
OPTIONAL_FILES = frozenset({"tokenizer.model"})
_RESERVED_KEYS = frozenset({"format", "step", "files", STATE_HASH_KEY})
_SHARD_FILE = re.compile(rf"{SHARD_DIR}/shard-[0-9]{{5}}-model-00001-of-00001\.safetensors")
_STEP_DIR = re.compile(r"step-([0-9]{8})")  # used with fullmatch: no Unicode digits, no "\n"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

# A check a caller adds to verification (e.g. the trainer's own state.json keys): it raises
# CheckpointError saying why the checkpoint at the path, with that state, is unusable.
StateCheck = Callable[[Path, dict[str, Any]], None]


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def _shown(value: Any) -> str:
    """A JSON value for an error message, cut short: a hostile file may hold megabytes."""
    try:
        text = json.dumps(value)
    except RecursionError:
        text = f"a {type(value).__name__} nested too deep"
    return text if len(text) <= 60 else text[:57] + "..."


def _state_hash(state: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``state`` without its own hash (ValueError on NaN)."""
    body = {key: value for key, value in state.items() if key != STATE_HASH_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def begin_checkpoint(save_dir: Path, step: int) -> Path:
    """The empty temporary folder a checkpoint of ``step`` is written into (ranks write their
    shards there before `save_checkpoint`). An existing folder of that step is a
    CheckpointError, never replaced: it may hold the only copy of weights that merely failed
    to verify."""
    if not is_int(step) or not 0 <= step <= MAX_STEP:
        raise CheckpointError(f"cannot save a checkpoint at step {step!r}: the step must be an "
                              f"integer from 0 to {MAX_STEP} (the folder name has 8 digits)")
    save_dir.mkdir(parents=True, exist_ok=True)
    final = save_dir / step_dir_name(step)
    if final.exists() or final.is_symlink():
        raise CheckpointError(f"{final} already exists and is not replaced (a checkpoint is "
                              f"never deleted to make room); move it aside, e.g. mv {final} "
                              f"{final}.old")
    for stale in save_dir.glob(".tmp-step-*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    tmp = save_dir / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    tmp.mkdir()
    return tmp


def save_checkpoint(save_dir: Path, step: int, model_state: dict[str, torch.Tensor] | None,
                    training_state: dict[str, Any], state: dict[str, Any],
                    extra_files: dict[str, Path] | None = None, tmp: Path | None = None) -> Path:
    """Write a complete checkpoint for ``step`` and return its final directory.

    ``extra_files`` (name in the checkpoint -> source, names from ``OPTIONAL_FILES``) are
    copied in and hashed like the rest. Everything goes into ``tmp`` (`begin_checkpoint`)
    first; the directory is renamed only after every file is flushed, so a crash leaves either
    no checkpoint or a complete one. ``model_state`` None: ``tmp`` holds the ranks' shards
    instead. ``state`` must be plain JSON (no NaN): state.json records the SHA-256 of its
    canonical form, which readers recompute."""
    reserved = sorted(_RESERVED_KEYS & set(state))
    if reserved:
        raise CheckpointError(f"the checkpoint state must not set {', '.join(reserved)}: "
                              "save_checkpoint writes these itself")
    try:  # as a reader will see it: tuples become lists, keys strings
        body = json.loads(json.dumps(state, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint state is not plain JSON ({exc})") from exc
    extra = dict(extra_files or {})
    unknown = sorted(set(extra) - OPTIONAL_FILES)
    if unknown:
        raise CheckpointError(f"unknown checkpoint file name(s): {', '.join(unknown)}")
    tmp = begin_checkpoint(save_dir, step) if tmp is None else tmp
    final = save_dir / step_dir_name(step)
    if model_state is None:
        weights = sorted(f"{SHARD_DIR}/{file.name}" for file in (tmp / SHARD_DIR).iterdir())
    else:
        weights = [MODEL_FILE]
        tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
        save_file(tensors, str(tmp / MODEL_FILE))
    torch.save(training_state, tmp / TRAINING_FILE)
    for name, source in extra.items():
        shutil.copyfile(source, tmp / name)
    files = {}
    for name in (*weights, TRAINING_FILE, *sorted(extra)):
        _fsync(tmp / name)
        files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
    fmt = FORMAT_VERSION if model_state is not None else SHARDED_FORMAT
    full_state = {"format": fmt, "step": step, **body, "files": files}
    full_state[STATE_HASH_KEY] = _state_hash(full_state)
    (tmp / STATE_FILE).write_text(json.dumps(full_state, indent=1), encoding="utf-8")
    _fsync(tmp / STATE_FILE)
    os.replace(tmp, final)
    _fsync(save_dir)
    return final


def read_state(path: Path) -> dict[str, Any]:
    """state.json of the checkpoint folder ``path``, checked against the generic schema (and,
    from format 3, its own hash); whatever is wrong becomes a CheckpointError saying what."""
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    try:
        state = json.loads((path / STATE_FILE).read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {STATE_FILE} is missing (partial checkpoint)") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: {STATE_FILE} is a directory, not a file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read {STATE_FILE} ({exc})") from exc
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a 5000-digit number, nesting
        raise CheckpointError(f"{path}: {STATE_FILE} is not valid JSON ({exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: {STATE_FILE} must hold a JSON object, not {_shown(state)}")
    for key in ("format", "step", "files"):
        if key not in state:
            raise CheckpointError(f"{path}: {STATE_FILE} has no {key!r} (it was edited or "
                                  "corrupted, or not written by omni)")
    fmt = state["format"]
    if not is_int(fmt) or fmt not in READABLE_FORMATS:
        raise CheckpointError(
            f"{path}: checkpoint format {_shown(fmt)} is not supported (this omni reads formats "
            f"{' and '.join(map(str, READABLE_FORMATS))}; the model changed since it was "
            "written: retrain, or use the omni version that wrote it)")
    step = state["step"]
    if not is_int(step) or not 0 <= step <= MAX_STEP:
        raise CheckpointError(f"{path}: {STATE_FILE} step must be an integer from 0 to "
                              f"{MAX_STEP}, not {_shown(step)}")
    named = _STEP_DIR.fullmatch(path.name)
    if named and int(named.group(1)) != step:
        raise CheckpointError(f"{path}: {STATE_FILE} says step {step} but the folder is "
                              f"{path.name} (edited, or copied into the wrong folder?)")
    files = state["files"]
    if not isinstance(files, dict):
        raise CheckpointError(f"{path}: {STATE_FILE} 'files' must be an object of file name "
                              f"-> size and hash, not {_shown(files)}")
    listed = set(files)
    shards = {name for name in listed if _SHARD_FILE.fullmatch(name)}
    weights = {MODEL_FILE} if fmt < SHARDED_FORMAT else shards
    if not (weights and {TRAINING_FILE} | weights <= listed
            and listed <= {TRAINING_FILE} | weights | OPTIONAL_FILES):
        what = MODEL_FILE if fmt < SHARDED_FORMAT else f"{SHARD_DIR}/shard-*.safetensors"
        raise CheckpointError(f"{path}: state.json must list {what} and {TRAINING_FILE} "
                              f"(and optionally {', '.join(sorted(OPTIONAL_FILES))}), "
                              f"not {', '.join(sorted(listed))[:300] or 'nothing'}")
    for name, meta in files.items():
        if not (isinstance(meta, dict) and is_int(meta.get("bytes")) and meta["bytes"] >= 0
                and isinstance(meta.get("sha256"), str) and _SHA256_HEX.fullmatch(meta["sha256"])):
            raise CheckpointError(f"{path}: {STATE_FILE} entry of {name} must be "
                                  '{"bytes": a size >= 0, "sha256": 64 lowercase hex digits}, '
                                  f"not {_shown(meta)}")
    if fmt >= 3:
        recorded = state.get(STATE_HASH_KEY)
        try:
            actual = _state_hash(state)
        except (ValueError, RecursionError):  # NaN or Infinity: never written by omni
            actual = None
        if recorded != actual:
            raise CheckpointError(f"{path}: {STATE_FILE} was edited or corrupted (its content "
                                  f"does not match its {STATE_HASH_KEY})")
    elif STATE_HASH_KEY in state:
        raise CheckpointError(f"{path}: {STATE_FILE} was edited or corrupted (it says format "
                              f"{fmt}, which has no {STATE_HASH_KEY}, yet carries one)")
    return state


def verify_checkpoint(path: Path, hashes: bool = True) -> dict[str, Any]:
    """Return the checkpoint's state.json after checking it and the size and SHA-256 of every
    file it lists (with ``hashes`` False, the sizes only: a checkpoint hashed before).

    Anything wrong (a partial folder, a truncated or corrupt file, a state.json that is not
    what save_checkpoint wrote) is a CheckpointError naming the problem, never another
    exception, so a search can skip the checkpoint and say why. Only the generic schema is
    checked; the trainer's own keys are checked by the ``check`` of find_latest_checkpoint."""
    state = read_state(path)
    files = state["files"]
    try:
        for name, meta in files.items():  # sizes first: a partial copy costs no hashing
            file = path / name
            if not file.is_file():
                raise CheckpointError(f"{path}: {name} is missing (partial checkpoint)")
            size = file.stat().st_size
            if size != meta["bytes"]:
                raise CheckpointError(f"{path}: {name} has {size} bytes, state.json says "
                                      f"{meta['bytes']} (truncated?)")
        if (path / SHARD_DIR).is_dir():  # the reader loads every file there
            unlisted = sorted({f"{SHARD_DIR}/{f.name}" for f in (path / SHARD_DIR).iterdir()}
                              - set(files))
            if unlisted:
                raise CheckpointError(f"{path}: {unlisted[0][:80]} is not in the manifest "
                                      "(added after the checkpoint was written)")
        for name, meta in files.items() if hashes else ():
            if _sha256(path / name) != meta["sha256"]:
                raise CheckpointError(f"{path}: {name} does not match its recorded SHA-256 "
                                      "(corrupt)")
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint's files ({exc})") from exc
    return state


def is_sharded(state: dict[str, Any]) -> bool:
    """Whether the checkpoint of (verified) ``state`` keeps its weights in ``shards/``."""
    return MODEL_FILE not in state["files"]


def weights_sha256(state: dict[str, Any]) -> str:
    """One SHA-256 for the weights of (verified) ``state``: model.safetensors' own, or the
    hash of the shard files' names and hashes."""
    files = state["files"]
    if not is_sharded(state):
        return str(files[MODEL_FILE]["sha256"])
    listing = "".join(f"{name} {meta['sha256']}\n" for name, meta in sorted(files.items())
                      if name.startswith(SHARD_DIR))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


@dataclass
class LoadedCheckpoint:
    path: Path
    state: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    training_state: dict[str, Any]


def load_checkpoint(path: Path, expected: Mapping[str, torch.Tensor] | None = None
                    ) -> LoadedCheckpoint:
    """Verify then load a checkpoint; tensors are loaded with ``weights_only=True``. With
    ``expected`` (a state_dict), weights whose names or shapes differ are refused unread.
    Sharded weights are read whole in this process only with ``expected`` (without it,
    ``model_state`` is empty: a sharded run loads its own shards, `sharded.load_shards`)."""
    state = verify_checkpoint(path)
    try:
        if is_sharded(state):
            model_state = {} if expected is None else read_weights(path, expected)
        else:
            model_state = (load_file(str(path / MODEL_FILE)) if expected is None
                           else load_checked(path / MODEL_FILE, expected))
        training_state = torch.load(path / TRAINING_FILE, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
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
        match = _STEP_DIR.fullmatch(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found, reverse=True)


def _looks_like_checkpoint(folder: Path) -> bool:
    return (folder / STATE_FILE).exists() or _STEP_DIR.fullmatch(folder.name) is not None


def checkpoint_dir(path: Path) -> Path:
    """The checkpoint folder ``path`` names: the folder itself, or the one holding the file
    ``path`` points at (``SAVE_DIR/step-00000010/training.pt``), since a user may pass
    either. The folder is not verified here; CheckpointError when ``path`` is neither."""
    if path.is_dir() and _looks_like_checkpoint(path):
        return path
    if path.exists() and not path.is_dir() and _looks_like_checkpoint(path.parent):
        return path.parent
    why = "it does not exist" if not path.exists() else (
        f"a checkpoint folder holds {STATE_FILE} and is named like {step_dir_name(100)}")
    raise CheckpointError(f"{path} is neither a checkpoint folder nor a file in one ({why})")


def _check_usable(path: Path, check: StateCheck | None, hashes: bool = True) -> None:
    state = verify_checkpoint(path, hashes)
    if check is not None:
        check(path, state)


def find_latest_checkpoint(save_dir: Path, check: StateCheck | None = None) -> CheckpointSearch:
    """Newest checkpoint that verifies and passes ``check``; the newer ones (corrupt, partial,
    or refused by ``check``) are reported with the reason, never loaded."""
    search = CheckpointSearch(latest=None)
    for _, path in list_checkpoints(save_dir):
        try:
            _check_usable(path, check)
        except CheckpointError as exc:
            search.skipped.append((path, str(exc)))
            continue
        search.latest = path
        break
    return search


def prune_checkpoints(save_dir: Path, keep_last: int, *, keep: Path | None = None,
                      check: StateCheck | None = None,
                      verified: set[Path] | None = None) -> list[Path]:
    """Keep the newest ``keep_last`` usable checkpoints, delete older usable ones (0 keeps
    all); return the removed.

    Usable means it verifies and passes ``check``. A partial or corrupt folder is neither
    counted (else it could push the last good checkpoint out) nor deleted (someone may want
    to look at it). ``keep``, the checkpoint just written, is trusted without re-hashing,
    never deleted, and counts as one of the kept wherever its step falls. ``verified``
    (resolved paths) are the checkpoints this process hashed already: only their sizes are
    checked again; the others are hashed once and added, so a run hashes each checkpoint once,
    not every kept one at every save."""
    if keep_last <= 0:
        return []
    kept_path = None if keep is None else keep.resolve()
    kept, removed = 0, []
    for _, path in list_checkpoints(save_dir):
        if path.resolve() == kept_path:
            kept += 1
            continue
        resolved = path.resolve()
        try:
            _check_usable(path, check, hashes=verified is None or resolved not in verified)
        except CheckpointError:
            continue
        if verified is not None:
            verified.add(resolved)
        if kept < keep_last:
            kept += 1
        elif not path.is_symlink():  # a link to a checkpoint elsewhere is not ours to delete
            try:
                shutil.rmtree(path)
            except OSError as exc:
                raise CheckpointError(f"cannot delete the old checkpoint {path} ({exc}); "
                                      "delete it by hand or pass a larger keep_last") from exc
            removed.append(path)
    return removed
