"""Per-modality encoders (raw input -> tokens) and decoders (tokens -> raw output of a given
size: audio or video frames, image side), listed in `omnilatent.model.modalities.REGISTRY`.

Notation: B batch, N tokens, D model dim, M mel bins, T time steps, P patch size."""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from omnilatent.config import OmniLatentConfig


class AudioEncoder(nn.Module):
    """1-D conv stack over log-mel; downsamples time by ``audio_stride``."""

    def __init__(self, cfg: OmniLatentConfig) -> None:
        super().__init__()
        self.stride = cfg.audio_stride
        self.conv_in = nn.Conv1d(cfg.n_mels, cfg.hidden_dim, kernel_size=3, padding=1)
        self.down = nn.Conv1d(cfg.hidden_dim, cfg.hidden_dim, cfg.audio_stride, cfg.audio_stride)

    def forward(self, mel: Tensor) -> Tensor:
        pad = (-mel.shape[-1]) % self.stride
        mel = F.pad(mel, (0, pad))  # (B, M, T') with T' a multiple of the stride
        x = self.down(F.gelu(self.conv_in(mel)))  # (B, D, T'/stride)
        return x.transpose(1, 2)  # (B, N, D)


class AudioDecoder(nn.Module):
    def __init__(self, cfg: OmniLatentConfig) -> None:
        super().__init__()
        self.up = nn.ConvTranspose1d(cfg.hidden_dim, cfg.hidden_dim, cfg.audio_stride,
                                     cfg.audio_stride)
        self.conv_out = nn.Conv1d(cfg.hidden_dim, cfg.n_mels, kernel_size=3, padding=1)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        x = F.gelu(self.up(x.transpose(1, 2)))  # (B, D, N*stride)
        return self.conv_out(x)[..., :frames]  # (B, M, T)


class ImageEncoder(nn.Module):
    """16x16 patches -> tokens. A linear map of flattened patches: the same function as a
    stride-16 convolution, as one matrix multiply (several times faster on CPU)."""

    def __init__(self, cfg: OmniLatentConfig) -> None:
        super().__init__()
        self.patch = cfg.patch_size
        self.proj = nn.Linear(3 * cfg.patch_size**2, cfg.hidden_dim)

    def forward(self, image: Tensor) -> Tensor:
        patches = rearrange(image, "b c (h p) (w q) -> b (h w) (c p q)", p=self.patch,
                            q=self.patch)  # (B, (H/P)*(W/P), 3*P*P)
        return self.proj(patches)  # (B, N, D)


class ImageDecoder(nn.Module):
    def __init__(self, cfg: OmniLatentConfig) -> None:
        super().__init__()
        self.patch = cfg.patch_size
        self.proj = nn.Linear(cfg.hidden_dim, 3 * cfg.patch_size**2)

    def forward(self, x: Tensor, side: int) -> Tensor:
        x = self.proj(x)  # (B, N, 3*P*P)
        return rearrange(x, "b (h w) (c p q) -> b c (h p) (w q)", h=side // self.patch,
                         p=self.patch, q=self.patch)  # (B, 3, side, side)


class VideoEncoder(nn.Module):
    """Tubelets of tubelet_size frames x patch x patch -> tokens, as a linear map of the
    flattened tubelet (a non-overlapping 3-D convolution, without its slow CPU kernel)."""

    def __init__(self, cfg: OmniLatentConfig) -> None:
        super().__init__()
        self.tubelet = cfg.tubelet_size
        self.patch = cfg.patch_size
        self.proj = nn.Linear(3 * cfg.tubelet_size * cfg.patch_size**2, cfg.hidden_dim)

    def forward(self, video: Tensor) -> Tensor:
        tubes = rearrange(video, "b c (t r) (h p) (w q) -> b (t h w) (c r p q)",
                          r=self.tubelet, p=self.patch, q=self.patch)  # (B, N, 3*4*P*P)
        return self.proj(tubes)  # (B, T/4 * H/P * W/P, D)


class VideoDecoder(nn.Module):
    """Tokens -> tubelets: the linear inverse of `VideoEncoder`'s layout (a transposed 3-D
    convolution with stride = kernel computes the same, measured 5x slower on CPU)."""

    def __init__(self, cfg: OmniLatentConfig) -> None:
        super().__init__()
        self.tubelet = cfg.tubelet_size
        self.patch = cfg.patch_size
        self.side = cfg.video_size // cfg.patch_size
        self.proj = nn.Linear(cfg.hidden_dim, 3 * cfg.tubelet_size * cfg.patch_size**2)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        x = self.proj(x)  # (B, N, 3*4*P*P)
        return rearrange(x, "b (t h w) (c r p q) -> b c (t r) (h p) (w q)",
                         t=frames // self.tubelet, h=self.side,
                         w=self.side, r=self.tubelet, p=self.patch, q=self.patch)  # (B,3,T,H,W)
