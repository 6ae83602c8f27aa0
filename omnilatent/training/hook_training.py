"""Training from a trained checkpoint, and training a Latent Neural Hook on a frozen model:
`omni train --from CHECKPOINT --hook NAME[:tokens=8,layers=0-5] --freeze-base`.

The seed's hook use cases (task-specific behaviour, knowledge injection, a new modality) add a
hook to a model that already works and teach the hook alone. What such a run adds to a plain
one (`omnilatent.training.run` composes these steps):

- `StartOptions`: where the weights start (`--from`), the new hooks (`HookSpec`, parsed from
  the command line by `parse_hook_spec`) and `--freeze-base`;
- `add_hooks`: register the new hooks and freeze everything else, before the optimizer is
  built (it takes only parameters that require grad, so a frozen base is never updated, nor
  decayed: its weights stay bit-identical);
- `run_origin` / `check_origin`: what a checkpoint records about where its run started, so a
  resume from another start is refused, naming both;
- `HookExport`: each new hook alone (`hook.json` + `hook.safetensors`, `LatentNeuralHook.save`)
  in ``SAVE_DIR/hooks/NAME/``, the hook of the newest checkpoint, for `omni eval`/`generate
  --hook`. The step checkpoints stay complete (base included), so `--resume` works as for any
  run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from omnilatent.checkpoint.files import MODEL_FILE, is_sharded, read_state
from omnilatent.checkpoint.sharded import read_weights
from omnilatent.config import OmniLatentConfig
from omnilatent.errors import HookError, UsageError
from omnilatent.model import OmniLatentModel
from omnilatent.model.hooks import MAX_HOOK_LAYER, MAX_HOOK_TOKENS, LatentNeuralHook
from omnilatent.training.trainer import TrainerCallbacks

HOOKS_DIR = "hooks"  # SAVE_DIR/hooks/NAME: each new hook of the newest checkpoint, alone
DEFAULT_HOOK_TOKENS = 8
_SPEC_KEYS = ("tokens", "layers")
_SPEC_FORM = "NAME[:tokens=N,layers=A-B] (layers: a range A-B or a list A,B,C)"


@dataclass(frozen=True)
class HookSpec:
    """A new hook as `--hook` names it: ``layers`` None targets every layer."""

    name: str
    tokens: int = DEFAULT_HOOK_TOKENS
    layers: tuple[int, ...] | None = None

    def describe(self) -> str:
        layers = "" if self.layers is None else f",layers={','.join(map(str, self.layers))}"
        return f"{self.name}:tokens={self.tokens}{layers}"

    def build(self, config: OmniLatentConfig) -> LatentNeuralHook:
        """The hook for a model of ``config``; UsageError when it names a layer the model
        lacks (or a name a hook cannot have)."""
        layers = self.layers if self.layers is not None else tuple(range(config.num_layers))
        beyond = [layer for layer in layers if layer >= config.num_layers]
        if beyond:
            raise UsageError(f"--hook {self.describe()}: layer(s) "
                             f"{', '.join(map(str, beyond))} beyond the model, which has "
                             f"layers 0-{config.num_layers - 1}",
                             hint=f"omit layers= to target all {config.num_layers} layers")
        try:
            return LatentNeuralHook(self.name, self.tokens, config.hidden_dim, list(layers))
        except HookError as exc:
            raise UsageError(f"--hook {self.describe()}: {exc}") from None


def _positive(text: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_HOOK_TOKENS:
        raise UsageError(f"--hook {spec!r}: tokens must be a positive integer, got {text!r} "
                         f"(at most {MAX_HOOK_TOKENS})",
                         hint=f"e.g. --hook style:tokens={DEFAULT_HOOK_TOKENS}")
    return value


def _layers(text: str, spec: str) -> tuple[int, ...]:
    """``A-B`` (inclusive), ``A,B,C`` or a mix; UsageError on anything else."""
    layers: set[int] = set()
    for item in text.split(","):
        first, dash, last = item.strip().partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            low, high = -1, -1
        if low < 0 or high < low or high > MAX_HOOK_LAYER:  # checked before the range is made
            raise UsageError(f"--hook {spec!r}: bad layers {text!r} (layer {item.strip()!r})",
                             hint=f"layers are numbers from 0 to {MAX_HOOK_LAYER}: a range "
                             "like 0-5 or a list like 0,2,4")
        layers.update(range(low, high + 1))
    return tuple(sorted(layers))


def parse_hook_spec(spec: str) -> HookSpec:
    """``NAME[:tokens=N,layers=A-B|A,B,C]`` -> HookSpec; UsageError naming what is wrong. A
    comma-separated item without ``=`` continues the layer list (``layers=0,2,4``)."""
    name, _, rest = spec.partition(":")
    if not name.strip():
        raise UsageError(f"--hook {spec!r}: the hook needs a name", hint=f"--hook {_SPEC_FORM}")
    values: dict[str, str] = {}
    key = None
    for item in rest.split(",") if rest.strip() else []:
        item = item.strip()
        field, sep, value = item.partition("=")
        if sep:
            key = field.strip()
            if key not in _SPEC_KEYS:
                raise UsageError(f"--hook {spec!r}: unknown setting {key!r} (allowed: "
                                 f"{', '.join(_SPEC_KEYS)})", hint=f"--hook {_SPEC_FORM}")
            if key in values:
                raise UsageError(f"--hook {spec!r}: {key} is given twice")
            values[key] = value.strip()
        elif key == "layers" and item:
            values["layers"] += "," + item
        else:
            raise UsageError(f"--hook {spec!r}: {item!r} is not KEY=VALUE",
                             hint=f"--hook {_SPEC_FORM}")
    tokens = _positive(values["tokens"], spec) if "tokens" in values else DEFAULT_HOOK_TOKENS
    layers = _layers(values["layers"], spec) if "layers" in values else None
    return HookSpec(name.strip(), tokens, layers)


@dataclass(frozen=True)
class StartOptions:
    """Where a run's weights start and what trains. ``checkpoint``: a trained checkpoint
    (folder, or a save dir: its newest) whose weights, model shape and tokenizer the run
    takes, with a fresh optimizer at step 0 (`resume` continues a run instead); ``hooks``:
    new hooks registered before the optimizer is built; ``freeze_base``: only they train."""

    checkpoint: Path | None = None
    hooks: tuple[HookSpec, ...] = ()
    freeze_base: bool = False

    def __post_init__(self) -> None:
        if self.freeze_base and not self.hooks:
            raise UsageError("--freeze-base trains only new hooks, and none is given",
                             hint="add --hook NAME[:tokens=8,layers=0-5]")
        if self.freeze_base and self.checkpoint is None:
            raise UsageError("--freeze-base keeps a trained model as it is, and none is given",
                             hint="add --from CHECKPOINT (a checkpoint folder or save dir)")
        names = [spec.name for spec in self.hooks]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise UsageError(f"--hook names must differ; repeated: {', '.join(repeated)}")

    @property
    def used(self) -> bool:
        """Whether the run starts anywhere but from a fresh model alone."""
        return self.checkpoint is not None or bool(self.hooks)


def add_hooks(model: OmniLatentModel, start: StartOptions) -> list[LatentNeuralHook]:
    """Register ``start``'s new hooks (their tokens drawn from the global torch RNG) and,
    with ``freeze_base``, stop gradient to every other parameter."""
    hooks = []
    for spec in start.hooks:
        if spec.name in model.hooks:
            raise UsageError(f"--from {start.checkpoint} already has a hook named "
                             f"{spec.name!r} (its hooks: {', '.join(model.hooks)})",
                             hint="give the new hook another name")
        hooks.append(model.register_hook(spec.build(model.config)))
    if start.freeze_base:
        trained = {id(p) for hook in hooks for p in hook.parameters()}
        for param in model.parameters():
            param.requires_grad_(id(param) in trained)
    return hooks


def run_origin(start: StartOptions, weights_sha256: str | None,
               hooks: list[LatentNeuralHook]) -> dict[str, Any] | None:
    """What every checkpoint of the run records about its start (None for a fresh model
    without new hooks): the starting weights' SHA-256 (not the path: a checkpoint may be
    named several ways), the new hooks' settings and whether the base is frozen."""
    if not start.used:
        return None
    return {"from": None if start.checkpoint is None else {
                "checkpoint": str(start.checkpoint), "weights_sha256": weights_sha256},
            "hooks": [hook.settings() for hook in hooks], "freeze_base": start.freeze_base}


def _describe(origin: Any) -> str:
    if not isinstance(origin, dict):
        return "a fresh model without new hooks"
    start = origin.get("from")
    parts = ["a fresh model" if not isinstance(start, dict)
             else f"--from {start.get('checkpoint')}"]
    parts += [f"--hook {h.get('name')}:tokens={h.get('num_tokens')},layers="
              f"{','.join(map(str, h.get('target_layers', [])))}"
              for h in origin.get("hooks", []) if isinstance(h, dict)]
    if origin.get("freeze_base"):
        parts.append("--freeze-base")
    return " ".join(parts)


def _same_origin(saved: Any, origin: dict[str, Any] | None) -> bool:
    def key(value: Any) -> Any:
        if not isinstance(value, dict):
            return None
        start = value.get("from")
        return (start.get("weights_sha256") if isinstance(start, dict) else None,
                value.get("hooks"), value.get("freeze_base"))

    return key(saved) == key(origin)


def check_origin(path: Path, state: dict[str, Any], origin: dict[str, Any] | None) -> None:
    """UsageError when the checkpoint at ``path`` (its state.json ``state``) belongs to a run
    that started elsewhere than ``origin`` says (other starting weights, other new hooks, or
    a base frozen in one and not the other): a resume must be given the options it began
    with."""
    saved = state.get("origin")
    if _same_origin(saved, origin):
        return
    raise UsageError(f"{path} belongs to a run started from {_describe(saved)}, but this run "
                     f"starts from {_describe(origin)}",
                     hint="resume with the options that run was started with, or choose "
                     "another --save-dir")


def export_hooks(checkpoint: Path, names: list[str], save_dir: Path) -> list[Path]:
    """Write each hook of ``names`` alone, as the checkpoint at ``checkpoint`` holds it, to
    ``save_dir/hooks/NAME`` (replacing the previous one: written beside, then renamed)."""
    state = read_state(checkpoint)
    settings = {item["name"]: item for item in state["hooks"]}
    written = []
    for name in names:
        prefix = f"hooks.{name}."
        with torch.random.fork_rng(devices=[]):  # the hook's init must not move the run's RNG
            hook = LatentNeuralHook(**settings[name])
        if is_sharded(state):
            expected = {prefix + k: v for k, v in hook.state_dict().items()}
            tensors = read_weights(checkpoint, expected, partial=True)
        else:
            with safe_open(str(checkpoint / MODEL_FILE), "pt") as weights:
                tensors = {k: weights.get_tensor(k) for k in weights.keys() if k.startswith(prefix)}
        hook.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()})
        written.append(_replace_folder(save_dir / HOOKS_DIR / name, hook.save))
    return written


def _replace_folder(final: Path, write: Callable[[Path], object]) -> Path:
    """``write(folder)`` into a temporary folder, then put it in ``final``'s place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    old = final.parent / f".old-{final.name}-{os.getpid()}"
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    write(tmp)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class HookExport(TrainerCallbacks):
    """Exports the new hooks (`export_hooks`) of each checkpoint as it is written."""

    names: list[str]
    save_dir: Path

    def on_checkpoint(self, path: Path) -> None:
        export_hooks(path, self.names, self.save_dir)
