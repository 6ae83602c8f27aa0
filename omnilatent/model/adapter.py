"""Sequence adaptation: map N backbone outputs to the L tokens the target decoder needs.

Queries are the backbone outputs linearly resampled to length L plus a learned embedding of
the target modality; they cross-attend to the full backbone output, then pass an MLP. When
N == L the adapter is the identity, so reconstruction keeps token-to-token correspondence.

Notation: B batch, N source tokens, L target tokens, D model dim.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from omnilatent.config import MODALITIES, OmniLatentConfig
from omnilatent.model.layers import RMSNorm, SwiGLU


class SequenceAdapter(nn.Module):
    def __init__(self, cfg: OmniLatentConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.target_embed = nn.Embedding(len(MODALITIES), cfg.hidden_dim)
        self.q_norm = RMSNorm(cfg.hidden_dim, cfg.norm_eps)
        self.kv_norm = RMSNorm(cfg.hidden_dim, cfg.norm_eps)
        self.attn = nn.MultiheadAttention(cfg.hidden_dim, cfg.num_heads, bias=False,
                                          batch_first=True)
        self.mlp_norm = RMSNorm(cfg.hidden_dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.hidden_dim, cfg.mlp_hidden_dim)

    def forward(self, h: Tensor, length: int, target_index: int,
                key_padding: Tensor | None) -> Tensor:
        """h: (B, N, D); key_padding: (B, N) True where h is padding, or None."""
        if h.shape[1] == length:
            return h
        q = F.interpolate(h.transpose(1, 2), size=length, mode="linear", align_corners=False)
        q = q.transpose(1, 2) + self.target_embed.weight[target_index]  # (B, L, D)
        kv = self.kv_norm(h)
        attn, _ = self.attn(self.q_norm(q), kv, kv, key_padding_mask=key_padding,
                            need_weights=False)
        q = q + attn
        return q + self.mlp(self.mlp_norm(q))  # (B, L, D)
