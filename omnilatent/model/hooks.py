"""Latent Neural Hooks: learnable latent tokens that join self-attention at chosen layers.

A hook owns only its tokens, its gate and an optional inter-layer transform; it borrows the
backbone's attention and MLP weights at the layers it targets. Content reads a hook through a
sigmoid gate (initialised near shut, ``sigmoid(-4) ~= 0.018``) so a freshly added hook barely
perturbs a trained model, yet both the gate and the tokens get gradient from the first step.
Hook state is carried from one target layer to the next (through the transform when enabled),
several hooks compose (each attends to the others' tokens), and removing a hook restores the
model bit for bit because the hook-free code path is untouched."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from omnilatent.config import FIELD_CAPS
from omnilatent.errors import HookError
from omnilatent.model.layers import RMSNorm
from omnilatent.model.weights_file import load_checked

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
SETTINGS_FILE = "hook.json"
WEIGHTS_FILE = "hook.safetensors"
MAX_HOOK_TOKENS = 4096  # latent tokens of one hook: each joins attention at its layers
MAX_HOOK_LAYER = FIELD_CAPS["num_layers"] - 1  # no model has a layer beyond it


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class LatentNeuralHook(nn.Module):
    def __init__(self, name: str, num_tokens: int, dim: int,
                 target_layers: list[int] | tuple[int, ...], gate_bias_init: float = -4.0,
                 use_transform: bool = True) -> None:
        super().__init__()
        if not isinstance(name, str) or not _NAME.match(name):
            raise HookError(
                f"hook name must start with a letter or '_' and contain only letters, digits, "
                f"'_' or '-', got {name!r}")
        if not _is_int(num_tokens) or not 0 < num_tokens <= MAX_HOOK_TOKENS:
            raise HookError(f"hook {name!r}: num_tokens must be an integer from 1 to "
                            f"{MAX_HOOK_TOKENS}, got {num_tokens!r}"[:200])
        if not _is_int(dim) or not 0 < dim <= FIELD_CAPS["hidden_dim"]:
            raise HookError(f"hook {name!r}: dim must be an integer from 1 to "
                            f"{FIELD_CAPS['hidden_dim']}, got {dim!r}"[:200])
        if not (isinstance(target_layers, (list, tuple)) and target_layers
                and len(target_layers) <= MAX_HOOK_LAYER + 1
                and all(_is_int(layer) and 0 <= layer <= MAX_HOOK_LAYER
                        for layer in target_layers)):
            raise HookError(f"hook {name!r}: target_layers must list at least one layer, each "
                            f"from 0 to {MAX_HOOK_LAYER}")
        if not (isinstance(gate_bias_init, (int, float)) and not isinstance(gate_bias_init, bool)
                and math.isfinite(gate_bias_init)):
            raise HookError(f"hook {name!r}: gate_bias_init must be a finite number")
        if not isinstance(use_transform, bool):
            raise HookError(f"hook {name!r}: use_transform must be true or false")
        layers = sorted(set(target_layers))
        self.name = name
        self.num_tokens = num_tokens
        self.dim = dim
        self.target_layers = tuple(layers)
        self.gate_bias_init = float(gate_bias_init)
        self.use_transform = use_transform
        self.tokens = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)  # (K, D)
        self.gate = nn.Parameter(torch.tensor([float(gate_bias_init)]))  # (1,)
        self.transform = (
            nn.Sequential(RMSNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            if use_transform
            else None)

    def gate_value(self) -> Tensor:
        """How much content reads this hook, in (0, 1)."""
        return torch.sigmoid(self.gate)

    def initial_state(self, batch_size: int) -> Tensor:
        return self.tokens.unsqueeze(0).expand(batch_size, -1, -1)  # (B, K, D)

    def carry(self, state: Tensor) -> Tensor:
        """State handed from one target layer to the next: residual MLP, or unchanged."""
        if self.transform is None:
            return state
        return state + self.transform(state)  # (B, K, D)

    def settings(self) -> dict:
        return {"name": self.name, "num_tokens": self.num_tokens, "dim": self.dim,
                "target_layers": list(self.target_layers),
                "gate_bias_init": self.gate_bias_init, "use_transform": self.use_transform}

    def save(self, directory: str | Path) -> Path:
        """Write the hook alone (settings JSON + safetensors); no base-model weights."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE))
        (directory / SETTINGS_FILE).write_text(json.dumps(self.settings(), indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> LatentNeuralHook:
        """The hook saved in ``directory``: its settings are checked and its weights file's
        header compared with them before anything is allocated; HookError naming the file
        and what is wrong."""
        directory = Path(directory)
        settings_path, weights_path = directory / SETTINGS_FILE, directory / WEIGHTS_FILE
        if not settings_path.is_file() or not weights_path.is_file():
            raise HookError(
                f"{directory} is not a saved hook: expected {SETTINGS_FILE} and {WEIGHTS_FILE}")
        try:
            settings = json.loads(settings_path.read_bytes())
            with torch.device("meta"):
                shapes = cls(**settings).state_dict()
        except HookError as exc:
            raise HookError(f"{settings_path}: {exc}") from None
        except (ValueError, RecursionError, TypeError, OSError) as exc:
            raise HookError(f"{settings_path} is not valid hook settings "
                            f"({type(exc).__name__}: {exc})"[:300]) from None
        try:
            tensors = load_checked(weights_path, shapes)
        except (ValueError, OSError) as exc:
            raise HookError(f"{weights_path} {exc} (settings: {settings_path})") from None
        hook = cls(**settings)
        hook.load_state_dict(tensors)
        return hook
