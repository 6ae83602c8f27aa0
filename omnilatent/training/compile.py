"""`torch.compile` policy for training: each transformer block is compiled on its own.

Compiling the whole model (``torch.compile(model)``) specialises its graph on the task's
source and target modalities (strings, tensor ranks and dtypes), so the 16 tasks of the
all-to-all order need 16 graphs; dynamo stops at ``recompile_limit`` (8) and runs the rest of
the tasks eagerly, with only a log warning. Like torchtitan we compile each block instead:
every task runs the same blocks, so they share a handful of block graphs (with or without a
text padding mask, one per number of hooks active at a layer), and the sequence length turns
dynamic after the first change. Encoders, the target decoder and the heads stay eager.

Latent Neural Hooks reach a block as arguments (their states and gates), never as module
state baked into a graph, so a hook registered or removed after compiling takes effect at the
next call (a new hook count compiles one more block graph at most).

Only training calls (``block.training`` with grad enabled) go through the compiled graphs;
evaluation and generation run the same block eagerly, so they cost no compiles and never
spend the recompile budget. The block's ``forward`` is replaced on the instance, so module
hooks around it (FSDP2's unshard/reshard, DDP) stay eager and the state dict is unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from omnilatent.model import OmniLatentModel

BACKEND = "inductor"


def compile_blocks(model: OmniLatentModel,
                   backend: str | Callable | None = None) -> OmniLatentModel:
    """Compile every block of ``model`` in place for training; returns ``model``.

    Safe to call twice (a compiled block is left as it is). ``backend`` is any
    `torch.compile` backend, `BACKEND` when None ("aot_eager" compiles in a fraction of
    inductor's time; tests use it)."""
    for block in model.blocks:
        if not getattr(block, "_omni_compiled", False):
            block.forward = _training_forward(block, backend or BACKEND)
            block._omni_compiled = True
    return model


def _training_forward(block: nn.Module, backend: str | Callable) -> Callable[..., Any]:
    eager = block.forward
    compiled = torch.compile(eager, backend=backend)

    def forward(x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, hooks: list[Tensor],
                gates: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        if not (block.training and torch.is_grad_enabled()):
            return eager(x, cos, sin, mask, hooks, gates)
        # A hook's first state is its tokens expanded over the batch (stride 0), later ones
        # are dense: without this, each stride pattern would compile a graph of its own.
        hooks = [state.contiguous() for state in hooks]
        # The sequence length differs by task and by batch (text): dynamic from the first
        # graph, or every graph compiled before the first change would be thrown away.
        torch._dynamo.mark_dynamic(x, 1)  # (B, S, D)
        torch._dynamo.mark_dynamic(cos, 0)  # (S, Dh/2)
        torch._dynamo.mark_dynamic(sin, 0)
        if mask is not None:
            torch._dynamo.mark_dynamic(mask, 3)  # (B, 1, 1, S)
        return compiled(x, cos, sin, mask, hooks, gates)

    return forward
