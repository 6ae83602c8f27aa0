"""Target decoder: one query per output position, reading the backbone's output.

The backbone returns as many tokens as the *source* has; the target decoder needs as many as
the *target* has (text positions, audio frames / stride, image patches, video tubelets). Every
output position gets a query made of a learned target-modality embedding plus its position on
the target's own grid (text and audio: index; image: row and column; video: time, row and
column), as fixed sinusoids mapped by a learned linear layer, so any length works and position
7 of a caption knows it is position 7. The queries then pass ``decoder_layers`` blocks of
self-attention among themselves, cross-attention to the backbone output, and an MLP.

Text is decoded **autoregressively** by default: query i also carries the embedding of the
token before it (a learned start vector for the first) and self-attention is causal, so
training is teacher-forced in one pass and generation is greedy, token by token. Measured on
the demo world (README, "Design choices"), parallel text queries reach the same per-position
accuracy on fixed sentences but cannot represent a transcript whose words vary given the
source: each position is predicted independently, so a mixture of two likely sentences comes
out as a character-by-character blend. ``text_decoding="parallel"`` keeps that variant for the
measurement.

No token of one modality is paired with "its" token of another: the identity shortcut (output
token i = backbone token i) is the caller's decision and is taken only when the target is the
source modality on the same grid (reconstruction, future frames), where it is real.

Notation: B batch, S backbone tokens, L target positions, D model dim, H heads, Dh head dim,
F position features."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnilatent.config import MODALITIES, OmniLatentConfig
from omnilatent.model.layers import RMSNorm, SwiGLU
from omnilatent.model.modalities import REGISTRY

AXIS_FEATURES = 64  # sinusoid features per grid axis (32 frequencies, sin and cos)


def sinusoid_features(positions: Tensor, features: int = AXIS_FEATURES) -> Tensor:
    """(L,) integer positions -> (L, features) sin/cos at geometric frequencies.

    Periods run from 2*pi to 2*pi*10^4 positions, as in the original transformer: the fast ones
    tell neighbours apart, the slow ones say where in a long sequence a position lies."""
    half = features // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=positions.device) / half)
    angles = positions.float()[:, None] * freqs[None, :]  # (L, F/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (L, F)


def grid_features(grid: tuple[int, ...], device: torch.device) -> Tensor:
    """Features of every cell of a grid, row-major (the decoders' token order): (prod, F*axes)."""
    axes = torch.meshgrid(*[torch.arange(n, device=device) for n in grid], indexing="ij")
    return torch.cat([sinusoid_features(axis.reshape(-1)) for axis in axes], dim=-1)


class CrossAttention(nn.Module):
    """Multi-head attention from queries to a separate memory, with QK-norm like the backbone."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim, eps)
        self.k_norm = RMSNorm(self.head_dim, eps)

    def keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S, D) -> k, v each (B, H, S, Dh), QK-normed: computed once per generation."""
        b = memory.shape[0]
        k, v = self.kv(memory).view(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return self.k_norm(k), v

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
               causal: bool = False) -> Tensor:
        """x: (B, L, D) queries over k, v (B, H, S, Dh); mask: (B, 1, 1, S) keep-mask."""
        b, length, d = x.shape
        q = self.q_norm(self.q(x).view(b, length, self.num_heads, self.head_dim).transpose(1, 2))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.proj(out.transpose(1, 2).reshape(b, length, d))  # (B, L, D)

    def forward(self, x: Tensor, memory: Tensor, mask: Tensor | None = None,
                causal: bool = False) -> Tensor:
        """x: (B, L, D) queries; memory: (B, S, D); mask: (B, 1, 1, S) bool keep-mask."""
        return self.attend(x, *self.keys_values(memory), mask, causal)


class DecoderBlock(nn.Module):
    """Pre-norm: self-attention over the queries, cross-attention to the backbone, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, eps: float) -> None:
        super().__init__()
        self.self_norm = RMSNorm(dim, eps)
        self.self_attn = CrossAttention(dim, num_heads, eps)
        self.cross_norm = RMSNorm(dim, eps)
        self.memory_norm = RMSNorm(dim, eps)
        self.cross_attn = CrossAttention(dim, num_heads, eps)
        self.mlp_norm = RMSNorm(dim, eps)
        self.mlp = SwiGLU(dim, mlp_hidden)

    def forward(self, q: Tensor, memory: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        normed = self.self_norm(q)
        q = q + self.self_attn(normed, normed, causal=causal)
        q = q + self.cross_attn(self.cross_norm(q), self.memory_norm(memory), mask)
        return q + self.mlp(self.mlp_norm(q))  # (B, L, D)

    def step(self, q: Tensor, cache: dict[str, Tensor], mask: Tensor | None) -> Tensor:
        """One new position q (B, 1, D) of causal decoding. ``cache`` holds the memory's keys
        and values (``memory_k``/``memory_v``) and, growing by one each step, the earlier
        positions' (``self_k``/``self_v``): the same result as `forward` over the whole
        prefix, for the cost of one position."""
        normed = self.self_norm(q)
        k, v = self.self_attn.keys_values(normed)  # (B, H, 1, Dh)
        if "self_k" in cache:
            k, v = torch.cat([cache["self_k"], k], dim=2), torch.cat([cache["self_v"], v], dim=2)
        cache["self_k"], cache["self_v"] = k, v
        q = q + self.self_attn.attend(normed, k, v)  # the newest position sees all before it
        q = q + self.cross_attn.attend(self.cross_norm(q), cache["memory_k"], cache["memory_v"],
                                       mask)
        return q + self.mlp(self.mlp_norm(q))  # (B, 1, D)


@dataclass
class TextState:
    """Autoregressive generation in progress: every position's query and each block's cache."""

    queries: Tensor  # (B, L, D)
    caches: list[dict[str, Tensor]]


class TargetDecoder(nn.Module):
    """Backbone output (B, S, D) -> one vector per target position (B, L, D)."""

    def __init__(self, cfg: OmniLatentConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.autoregressive_text = cfg.text_decoding == "autoregressive"
        self.target_embed = nn.Embedding(len(MODALITIES), d)
        self.position = nn.ModuleDict({
            modality: nn.Linear(AXIS_FEATURES * parts.grid_axes(cfg), d, bias=False)
            for modality, parts in REGISTRY.items()})
        self.summary = nn.Linear(d, d, bias=False)
        self.start = nn.Parameter(torch.zeros(d))  # "previous token" of the first text position
        self.blocks = nn.ModuleList(DecoderBlock(d, cfg.num_heads, cfg.mlp_hidden_dim, cfg.norm_eps)
                                    for _ in range(cfg.decoder_layers))
        self.norm = RMSNorm(d, cfg.norm_eps)

    def queries(self, modality: str, grid: tuple[int, ...], memory: Tensor) -> Tensor:
        """(B, L, D): target embedding + position on the target's grid (L = prod(grid)) + the
        target token's reading of the source (memory[:, 0])."""
        index = MODALITIES.index(modality)
        pos = self.position[modality](grid_features(grid, memory.device))  # (L, D)
        fixed = pos + self.target_embed.weight[index]  # (L, D)
        return fixed.unsqueeze(0) + self.summary(memory[:, 0])[:, None, :]  # (B, L, D)

    def forward(self, memory: Tensor, modality: str, grid: tuple[int, ...],
                mask: Tensor | None = None, previous: Tensor | None = None) -> Tensor:
        """memory: (B, S, D) backbone output; mask: (B, 1, 1, S) keep-mask or None;
        previous: (B, L, D) embeddings of the tokens before each text position (teacher
        forcing or generation so far), required for autoregressive text."""
        q = self.queries(modality, grid, memory)  # (B, L, D)
        causal = modality == "text" and self.autoregressive_text
        if causal:
            if previous is None:
                raise ValueError("autoregressive text decoding needs the previous tokens")
            q = q + previous
        for block in self.blocks:
            q = block(q, memory, mask, causal)
        return self.norm(q)  # (B, L, D)

    def start_text(self, memory: Tensor, length: int) -> TextState:
        """State for generating up to ``length`` text positions from ``memory`` (B, S, D)."""
        queries = self.queries("text", (length,), memory)  # (B, L, D)
        caches = []
        for block in self.blocks:
            k, v = block.cross_attn.keys_values(block.memory_norm(memory))
            caches.append({"memory_k": k, "memory_v": v})
        return TextState(queries, caches)

    def step_text(self, state: TextState, position: int, previous: Tensor,
                  mask: Tensor | None) -> Tensor:
        """The decoder output (B, D) at text ``position``, given the embedding of the token
        before it (B, D): `forward`'s result at that position, one position at a time."""
        q = (state.queries[:, position] + previous)[:, None, :]  # (B, 1, D)
        for block, cache in zip(self.blocks, state.caches, strict=True):
            q = block.step(q, cache, mask)
        return self.norm(q)[:, 0]  # (B, D)

    def shifted(self, embedded: Tensor) -> Tensor:
        """Embedded target tokens (B, L, D) -> the token before each position (B, L, D): the
        start vector, then tokens 0..L-2."""
        start = self.start.to(embedded.dtype).expand(embedded.shape[0], 1, -1)  # (B, 1, D)
        return torch.cat([start, embedded[:, :-1]], dim=1)
