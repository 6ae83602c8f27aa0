"""Sharded checkpoints (FSDP): every rank writes its own shards of the model and optimizer
through torch.distributed.checkpoint (DCP), nothing gathered to one rank.

DCP's Hugging Face storage keeps each rank's shards in one safetensors file whose header
records where each shard lies in the full tensor (``DCP_SHARDING_INFO``). DCP's default
reader unpickles a ``.metadata`` file; this storage rebuilds the layout from those headers, so
a checkpoint is never unpickled. The headers are bounded and the full shapes they imply are
compared with the expected ones before DCP allocates or reads anything; DCP reshards, so the
files load at any world size, or in one process without a process group."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from omnilatent.errors import CheckpointError
from omnilatent.model.weights_file import read_header

SHARD_DIR = "shards"  # in the checkpoint folder: shard-0000R-model-00001-of-00001.safetensors
_SHARDING_KEY = "DCP_SHARDING_INFO"


def save_shards(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Write this rank's shards of ``model`` and ``optimizer`` into ``folder/shards``, a
    collective every rank calls. Returns what the shards do not hold (for training.pt): the
    optimizer's param groups and the parameters that have optimizer state."""
    import torch.distributed.checkpoint as dcp  # here: importing it takes half a second
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    optim = get_optimizer_state_dict(model, optimizer)
    dcp.save({"model": get_model_state_dict(model), "optim": optim["state"]},
             storage_writer=HuggingFaceStorageWriter(str(folder / SHARD_DIR),
                                                     save_distributed=True))
    return {"param_groups": optim["param_groups"], "stateful": list(optim["state"])}


def load_shards(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                saved: dict[str, Any]) -> None:
    """Load the shards into ``model`` and ``optimizer`` (sharded by FSDP2 or whole), with
    ``saved`` as `save_shards` returned it; a collective under a process group. Only the
    parameters that had optimizer state get it back, so the next step is the saved run's."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    weights = get_model_state_dict(model)
    state = get_optimizer_state_dict(model, optimizer)["state"]  # created by a zero step
    target = {"model": weights, "optim": {name: state[name] for name in saved["stateful"]}}
    _check(folder, {name: tuple(value.shape) for name, value in _flat(target)}, partial=False)
    _load(folder, target, no_dist=False)
    set_model_state_dict(model, weights)
    set_optimizer_state_dict(model, optimizer, {"state": target["optim"],
                                                "param_groups": saved["param_groups"]},
                             options=StateDictOptions(strict=False))


def read_weights(folder: Path, expected: Mapping[str, Tensor],
                 partial: bool = False) -> dict[str, Tensor]:
    """The full tensors of ``expected`` (a state_dict; meta tensors will do) in this process,
    without a process group. The shards must hold exactly those weights (with ``partial``,
    at least those) at those shapes: CheckpointError naming the first differences if not."""
    _check(folder, {f"model.{k}": tuple(v.shape) for k, v in expected.items()}, partial)
    target = {"model": {k: torch.empty(v.shape, dtype=v.dtype) for k, v in expected.items()}}
    _load(folder, target, no_dist=True)
    return target["model"]


def _load(folder: Path, target: dict[str, Any], no_dist: bool) -> None:
    """``target``'s tensors filled in place from the shards (checked before)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader

    try:
        with warnings.catch_warnings():  # DCP warns that one process loads without a group
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(target, storage_reader=HuggingFaceStorageReader(str(folder / SHARD_DIR)),
                     no_dist=no_dist)
    except (Exception, CheckpointException) as exc:  # the latter wraps each rank's failure
        raise CheckpointError(f"{folder / SHARD_DIR}: cannot load ({exc})"[:600]) from exc


def _flat(tree: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Tensor]]:
    """(name, tensor) of a nested state dict, named as DCP names them ("optim.w.exp_avg")."""
    out = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _check(folder: Path, expected: dict[str, tuple[int, ...]], partial: bool) -> None:
    """CheckpointError unless the shard files' headers cover exactly the ``expected`` shapes
    (``partial``: the other tensors of the same part may exist too), read before loading."""
    extents: dict[str, list[int]] = {}
    covered: dict[str, int] = {}
    for file in sorted((folder / SHARD_DIR).glob("*.safetensors")):
        try:
            shapes = read_header(file)
            with safe_open(str(file), "pt") as f:
                offsets = json.loads((f.metadata() or {})[_SHARDING_KEY])
            for name, shape in shapes.items():
                start = offsets[name]["saved_offsets"]
                if not all(isinstance(n, int) and n >= 0 for n in start):
                    raise ValueError(f"the offsets of {name[:80]!r} are not sizes")
                end = extents.setdefault(name, [0] * len(shape))  # zip: same ranks or error
                extents[name] = [max(e, o + n) for e, o, n in zip(end, start, shape, strict=True)]
                covered[name] = covered.get(name, 0) + math.prod(shape)
        except (ValueError, KeyError, TypeError, OSError, SafetensorError) as exc:
            raise CheckpointError(f"{file} is not a shard file of this checkpoint "
                                  f"({type(exc).__name__}: {exc})"[:400]) from None
    parts = {name.split(".", 1)[0] for name in expected}
    found = {name: tuple(extent) for name, extent in extents.items()
             if name.split(".", 1)[0] in parts}
    problems = sorted(
        [f"missing {k}" for k in expected.keys() - found.keys()]
        + ([] if partial else [f"unexpected {k[:80]}" for k in found.keys() - expected.keys()])
        + [f"{k} has shape {found[k]}, expected {expected[k]}" for k in expected.keys() & found
           if found[k] != expected[k] or covered[k] != math.prod(expected[k])])
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CheckpointError(f"{folder / SHARD_DIR} does not hold the tensors its settings "
                              "describe: " + "; ".join(problems[:3]) + more)
