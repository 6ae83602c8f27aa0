"""OmniLatent: an all-to-all multimodal transformer with Latent Neural Hooks.

The public names are imported on first use (PEP 562 `__getattr__`): importing a light
submodule such as `omnilatent.errors`, as every `omni` command does at start-up, then costs
milliseconds instead of the seconds that importing the model and torch takes."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omnilatent.config import MODALITIES, OmniLatentConfig
    from omnilatent.model import OmniLatentModel
    from omnilatent.model.hooks import LatentNeuralHook

__all__ = ["MODALITIES", "LatentNeuralHook", "OmniLatentConfig", "OmniLatentModel"]
__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {"MODALITIES": "omnilatent.config", "OmniLatentConfig": "omnilatent.config",
            "OmniLatentModel": "omnilatent.model", "LatentNeuralHook": "omnilatent.model.hooks"}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'omnilatent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
