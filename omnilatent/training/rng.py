"""Capture and restore every random number generator as plain JSON numbers."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch

from omnilatent.checkpoint.json_values import is_int
from omnilatent.errors import CheckpointError

_MT_WORDS = 624  # Mersenne Twister state words (python and numpy)


def _list_to_tensor(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and every CUDA device)."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"python": [version, list(internal), gauss],
            "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
            "torch": torch.get_rng_state().tolist(), "cuda": [s.tolist() for s in cuda]}


def restore_rng(state: dict[str, Any]) -> None:
    """Set every generator from ``capture_rng``'s output (checked with ``check_rng_state``).

    CUDA states are restored for the devices present: a checkpoint of a machine with more
    GPUs still resumes (not bit-identically; nor does any change of hardware)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np.array(np_keys, dtype=np.uint32), np_pos, np_has_gauss,
                         np_gauss))
    torch.set_rng_state(_list_to_tensor(state["torch"]))
    if torch.cuda.is_available():
        for device, values in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(_list_to_tensor(values), device)


def _words(value: Any, count: int | None, limit: int) -> bool:
    """Whether ``value`` is a list of ``count`` (any, if None) integers in [0, limit)."""
    return (isinstance(value, list) and (count is None or len(value) == count)
            and all(is_int(v) and 0 <= v < limit for v in value))


def check_rng_state(state: Any) -> None:
    """Raise CheckpointError saying which part of ``state`` ``restore_rng`` could not restore.

    Each part is first checked for shape and range (the generators accept some garbage and
    fail later, or read out of bounds), then set on a scratch generator of its kind, which
    runs the library's own validation without touching the global generators."""
    if not isinstance(state, dict) or not {"python", "numpy", "torch", "cuda"} <= set(state):
        raise CheckpointError("'rng' must be an object with the python, numpy, torch and cuda "
                              "generator states")
    python = state["python"]
    if not (isinstance(python, list) and len(python) == 3 and is_int(python[0])
            and _words(python[1], _MT_WORDS + 1, 2**32) and python[1][-1] <= _MT_WORDS
            and (python[2] is None or isinstance(python[2], float))):
        raise CheckpointError("'rng.python' must be [version, 625 words, gauss]")
    numpy = state["numpy"]
    if not (isinstance(numpy, list) and len(numpy) == 5 and numpy[0] == "MT19937"
            and _words(numpy[1], _MT_WORDS, 2**32) and is_int(numpy[2])
            and 0 <= numpy[2] <= _MT_WORDS and numpy[3] in (0, 1)
            and isinstance(numpy[4], (int, float)) and math.isfinite(numpy[4])):
        raise CheckpointError("'rng.numpy' must be ['MT19937', 624 words, position 0-624, "
                              "has_gauss 0/1, gauss]")
    size = torch.get_rng_state().numel()
    if not _words(state["torch"], size, 256):
        raise CheckpointError(f"'rng.torch' must be a list of {size} bytes")
    cuda = state["cuda"]
    if not (isinstance(cuda, list) and all(_words(values, None, 256) for values in cuda)):
        raise CheckpointError("'rng.cuda' must be a list of byte lists (one per GPU)")
    try:
        random.Random().setstate((python[0], tuple(python[1]), python[2]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"'rng.python' is not a Python random state ({exc})") from None
    try:
        torch.Generator().set_state(_list_to_tensor(state["torch"]))
        if torch.cuda.is_available():
            for device, values in enumerate(cuda[:torch.cuda.device_count()]):
                torch.Generator(device=f"cuda:{device}").set_state(_list_to_tensor(values))
    except RuntimeError as exc:
        raise CheckpointError(f"'rng' holds an invalid torch generator state ({exc})") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
