"""Training on several processes (GPUs, machines): DDP or FSDP2, launched by torchrun.

`torchrun` starts one process per device and sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous; `init_distributed` joins the process group (NCCL on CUDA, gloo on CPU). Every rank
builds the same model from the same seed (DDP also broadcasts rank 0's weights), reads its own
part of the data (the shard loader splits shards by rank; `rank_loader` splits map-style
datasets by sample) and runs the same number of forward/backward passes per step; the task of a
step is chosen from the task pairs *all* ranks can serve (`CommonPresent`), so the curriculum
and the task order stay in step. Rank 0 alone logs, holds the save dir's lock and writes
checkpoints in the single-process format plus every rank's data position and RNG states
(``state["distributed"]``), so each rank continues its own stream on resume; under FSDP2 each
rank writes its own shards of the weights and optimizer state into the same folder
(`omnilatent.checkpoint.sharded`), nothing gathered.

No step waits for the device: the ranks agree on host values (the modalities present, a stop
request, sample counts) over a gloo group of their own (`DistributedContext.host_group`; with
NCCL, a collective on the default group is queued behind the device's work, so reading its
result waits for the step), and the step's loss is all-reduced on the device and read later
with the others. Nor does a step wait on a host round trip: the trainer sums counts at log
intervals, checks for a stop every few steps and exchanges the modalities of a step's batches
a step ahead (`CommonPresent`, see `omnilatent.training.trainer`). With gradient
accumulation DDP all-reduces gradients once per step (`grad_sync`); FSDP2 reduce-scatters
every micro-batch, as torchtitan does, since skipping it would hold unsharded gradients."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset

from omnilatent.config import MODALITIES
from omnilatent.errors import ConfigError
from omnilatent.training.data import Batch, ResumableLoader, collate_multimodal


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job: ``rank`` of ``world_size``; ``fsdp`` shards the
    model (FSDP2) instead of replicating it (DDP). A world of 1 is a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    fsdp: bool = False
    # The gloo group for host values when the default group is NCCL; None: the default group.
    host_group: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank must lie in [0, world_size={self.world_size}), "
                              f"got {self.rank}")
        if self.local_rank < 0:
            raise ConfigError(f"local_rank must be >= 0, got {self.local_rank}")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistributedContext()
PAIRS = [(source, target) for source in MODALITIES for target in MODALITIES]  # a mask's order


def init_distributed(device: str, fsdp: bool = False) -> DistributedContext:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else a
    single-process context. On CUDA each process takes GPU LOCAL_RANK. ``fsdp`` in a single
    process is refused: there is nothing to shard over."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        if fsdp:
            raise ConfigError("--fsdp shards the model over several processes; launch with "
                              "torchrun --nproc_per_node N (N >= 2)")
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    host_group = (dist.new_group(backend="gloo", timeout=timedelta(minutes=30))
                  if dist.get_backend() == "nccl" else None)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, fsdp, host_group)


def teardown_distributed() -> None:
    """Leave the process group (a no-op when none was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(values: Sequence[float], op: dist.ReduceOp.RedOpType,
               context: DistributedContext) -> list[float]:
    """Host ``values`` combined over all ranks with ``op`` (float64, so counts stay exact),
    over the host group: never waits for a device."""
    tensor = torch.tensor(list(values), dtype=torch.float64)  # (N,)
    dist.all_reduce(tensor, op=op, group=context.host_group)
    return tensor.tolist()


def mean_over_ranks(value: Tensor, context: DistributedContext) -> Tensor:
    """``value`` (on this rank's device) averaged over the ranks, left on the device: the
    all-reduce is queued behind the step's work, and nothing waits for it here."""
    total = value.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / context.world_size


def grad_sync(module: nn.Module, context: DistributedContext,
              sync: bool) -> AbstractContextManager[Any]:
    """Where a backward pass runs: DDP's ``no_sync`` unless ``sync`` (the last micro-batch
    of a step), so gradients are all-reduced once per step; a plain context otherwise (one
    process, or FSDP2, which reduce-scatters every micro-batch to keep gradients sharded)."""
    if sync or not context.enabled or context.fsdp:
        return nullcontext()
    return module.no_sync()


class CommonPresent:
    """The task pairs every rank's batches can serve (`servable_pairs`): the same set
    everywhere, so every rank picks the same task (or skips the step together). Built when a
    step's batches are drawn, it sends this rank's set at once (an async MIN all-reduce over
    the host group); ``result`` waits for the answer, which the trainer asks for a step later
    when it draws a step ahead."""

    def __init__(self, context: DistributedContext, present: set[tuple[str, str]]) -> None:
        self._present = present
        self._work = None
        if context.enabled:
            self._mask = torch.tensor([float(pair in present) for pair in PAIRS],
                                      dtype=torch.float64)  # (len(PAIRS),)
            self._work = dist.all_reduce(self._mask, op=dist.ReduceOp.MIN,
                                         group=context.host_group, async_op=True)

    def result(self) -> set[tuple[str, str]]:
        if self._work is None:
            return self._present
        self._work.wait()
        return {pair for pair, flag in zip(PAIRS, self._mask.tolist(), strict=True)
                if flag == 1.0}


def any_rank(context: DistributedContext, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. a stop request that reached one)."""
    if not context.enabled:
        return flag
    return all_reduce([float(flag)], dist.ReduceOp.MAX, context)[0] == 1.0


def gather_to_main(context: DistributedContext, value: Any) -> list[Any] | None:
    """Every rank's ``value`` (picklable), in rank order, on rank 0; None on the others."""
    if not context.enabled:
        return [value]
    out: list[Any] | None = [None] * context.world_size if context.is_main else None
    dist.gather_object(value, out, dst=0, group=context.host_group)
    return out


def broadcast_from_main(context: DistributedContext, value: Any) -> Any:
    """Rank 0's ``value`` (picklable) on every rank."""
    if not context.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=context.host_group)
    return box[0]


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def _slice_batch(samples: Sequence[dict[str, Any]], rank: int, world_size: int) -> Batch:
    """Rank ``rank``'s samples of a global batch: every ``world_size``-th from ``rank``,
    collated with the global batch (text padded to its longest, as one process would)."""
    return {key: value[rank::world_size] for key, value in collate_multimodal(samples).items()}


def rank_loader(dataset: Dataset, batch_size: int, context: DistributedContext, seed: int = 0,
                num_workers: int = 0) -> ResumableLoader:
    """A resumable loader giving rank r samples r, r + N, r + 2N, ... of the global batches
    of ``batch_size * N`` samples that one process would read in the same order. So N
    processes with batch B train on exactly the samples of 1 process with batch N*B (each rank
    reads every sample of the global batch and keeps its own: map-style data is cheap)."""
    collate: Callable[[Sequence[dict[str, Any]]], Batch] = partial(
        _slice_batch, rank=context.rank, world_size=context.world_size)
    return ResumableLoader(dataset, batch_size * context.world_size, seed=seed,
                           num_workers=num_workers, collate_fn=collate)


def wrap_model(model: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """The module to run forward/backward through: ``model`` itself in one process, a DDP
    wrapper around it, or ``model`` sharded in place by FSDP2 (every transformer block, then
    the rest). Call before the optimizer is built: FSDP2 replaces the parameters."""
    if not context.enabled:
        return model
    if context.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model, "blocks", []):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True)  # each task uses only its modalities' parameters


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each optimizer parameter, in the order of its integer state keys."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def load_full_state(context: DistributedContext, model: nn.Module,
                    optimizer: torch.optim.Optimizer, weights: dict[str, Tensor],
                    optim: dict[str, Any]) -> None:
    """Load a single-process checkpoint's states (every rank read the same files; FSDP runs
    wrote these before their checkpoints were sharded); FSDP2 keeps each rank's shard."""
    if not context.fsdp:
        model.load_state_dict(weights)
        optimizer.load_state_dict(optim)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    names = _param_names(model, optimizer)
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    set_optimizer_state_dict(model, optimizer, {  # not strict: unused parameters have no state
        "state": {names[int(i)]: value for i, value in optim["state"].items()},
        "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                         for group in optim["param_groups"]],
    }, options=StateDictOptions(full_state_dict=True, strict=False))
