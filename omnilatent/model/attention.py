"""Self-attention block in which Latent Neural Hook tokens take part.

Content tokens attend to content with their own softmax; each hook's tokens are read through a
*separate* softmax whose result is scaled by that hook's sigmoid gate and added. A shared softmax
would let hook keys steal attention mass from content even with the gate shut; separating them
bounds the change to content by ``sigmoid(gate) * max|v_hook|`` per head. Hook tokens attend to
content and to every active hook's tokens (including their own) in one softmax, so hooks read
the sequence and each other.

Notation: B batch, S content length, K_i tokens of hook i, H heads, Dh head dim, D model dim."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnilatent.model.layers import RMSNorm, SwiGLU, apply_rope


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim, eps)
        self.k_norm = RMSNorm(self.head_dim, eps)
        self.dropout = dropout

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, D) -> q, k, v each (B, H, N, Dh), with QK-norm applied."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return self.q_norm(q), self.k_norm(k), v

    def _merge(self, x: Tensor) -> Tensor:
        b, _, n, _ = x.shape
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))  # (B, N, D)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                hooks: list[Tensor], gates: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """x: (B, S, D) normed content; mask: (B, 1, 1, S) bool keep-mask or None;
        hooks: normed hook states, each (B, K_i, D); gates: matching sigmoid gates, each (1,)."""
        drop = self.dropout if self.training else 0.0
        q, k, v = self._heads(x)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # positions for content only
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # (B,H,S,Dh)
        if not hooks:
            return self._merge(out), []

        sizes = [h.shape[1] for h in hooks]
        hq, hk, hv = self._heads(torch.cat(hooks, dim=1))  # one qkv for all hooks: (B,H,ΣK,Dh)
        for hook_k, hook_v, gate in zip(hk.split(sizes, dim=2), hv.split(sizes, dim=2), gates,
                                        strict=True):
            # A softmax per hook (see the module docstring): one call each, K_i keys only.
            read = F.scaled_dot_product_attention(q, hook_k, hook_v, dropout_p=drop)  # (B,H,S,Dh)
            out = out + gate.to(read.dtype) * read

        keys = torch.cat([k, hk], dim=2)  # (B, H, S + ΣK, Dh)
        values = torch.cat([v, hv], dim=2)
        hook_mask = None
        if mask is not None:
            hook_mask = F.pad(mask, (0, hk.shape[2]), value=True)  # hooks are never padding
        # Every hook token reads the same keys in one softmax: one call for all of them.
        o = F.scaled_dot_product_attention(hq, keys, values, attn_mask=hook_mask,
                                           dropout_p=drop)  # (B, H, ΣK, Dh)
        return self._merge(out), list(self._merge(o).split(sizes, dim=1))  # each (B, K_i, D)


class Block(nn.Module):
    """Pre-norm transformer block; hook states go through the same norms, attention and MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, eps: float, dropout: float):
        super().__init__()
        self.attn_norm = RMSNorm(dim, eps)
        self.attn = Attention(dim, num_heads, eps, dropout)
        self.mlp_norm = RMSNorm(dim, eps)
        self.mlp = SwiGLU(dim, mlp_hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                hooks: list[Tensor], gates: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        attn, hook_attn = self.attn(
            self.attn_norm(x), cos, sin, mask, [self.attn_norm(h) for h in hooks], gates)
        x = x + self.drop(attn)
        x = x + self.drop(self.mlp(self.mlp_norm(x)))  # (B, S, D)
        if not hooks:
            return x, []
        h = torch.cat(hooks, dim=1) + torch.cat(hook_attn, dim=1)  # (B, ΣK, D)
        h = h + self.mlp(self.mlp_norm(h))  # one MLP call for every hook's tokens
        return x, list(h.split([state.shape[1] for state in hooks], dim=1))  # each (B, K_i, D)
