"""The model's side of each modality, one entry per row of `pipeline.modalities.TABLE` (a new
modality: a row there, an entry here, its codec in `codecs.py`). Text has no codec: ids go in
and logits come out through the one (tied) text embedding. An output's *size* is its extent
along its own axis (tokens, frames, image side); its *grid* the target decoder's positions."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from omnilatent.config import OmniLatentConfig
from omnilatent.errors import ConfigError
from omnilatent.model import codecs
from pipeline.modalities import MODALITIES, PAD_ID


def text_loss(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy summed over real tokens (not PAD_ID) over their count (at least 1): for a
    target of padding only a zero that keeps the graph connected, with no NaN and no branch
    reading labels back to the host (a GPU sync per step)."""
    labels = target.flatten()  # (B*L,)
    total = F.cross_entropy(output.float().flatten(0, 1), labels, ignore_index=PAD_ID,
                            reduction="sum")  # ()
    return total / (labels != PAD_ID).sum().clamp(min=1)


def regression_loss(output: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(output.float(), target.float())


def _video_grid(cfg: OmniLatentConfig, frames: int) -> tuple[int, ...]:
    if frames % cfg.tubelet_size:
        raise ConfigError(f"video target length {frames} must be a multiple of "
                          f"tubelet_size ({cfg.tubelet_size})")
    return (frames // cfg.tubelet_size, *(cfg.video_size // cfg.patch_size,) * 2)


@dataclass(frozen=True)
class ModalityParts:
    encoder: type[nn.Module] | None  # input -> (B, N, D); None: ids via the text embedding
    decoder: type[nn.Module] | None  # (B, L, D), size -> output; None: tied text logits
    loss: Callable[[Tensor, Tensor], Tensor]  # (output, target) -> scalar
    accepts: Callable[[OmniLatentConfig, Tensor], bool]  # whether an input has the shape below
    shape: Callable[[OmniLatentConfig], str]
    size_axis: int | None  # a target's axis that holds its size; None: the config's
    default_size: Callable[[OmniLatentConfig], int | None]  # None: the source's length
    grid: Callable[[OmniLatentConfig, int], tuple[int, ...]]  # size -> the target decoder's grid

    def grid_axes(self, cfg: OmniLatentConfig) -> int:
        return len(self.grid(cfg, self.default_size(cfg) or 1))


REGISTRY = {  # in the table's order, which is the order of the model's modules
    "text": ModalityParts(
        None, None, text_loss,
        accepts=lambda c, x: x.dim() == 2 and not x.is_floating_point(),
        shape=lambda c: "(B, T) integer token ids", size_axis=1,
        default_size=lambda c: None, grid=lambda c, n: (n,)),
    "audio": ModalityParts(
        codecs.AudioEncoder, codecs.AudioDecoder, regression_loss,
        accepts=lambda c, x: x.dim() == 3 and x.shape[1] == c.n_mels,
        shape=lambda c: f"(B, {c.n_mels}, T_frames) log-mel", size_axis=-1,
        default_size=lambda c: c.audio_frames,
        grid=lambda c, n: (math.ceil(n / c.audio_stride),)),
    "image": ModalityParts(
        codecs.ImageEncoder, codecs.ImageDecoder, regression_loss,
        accepts=lambda c, x: x.dim() == 4 and tuple(x.shape[1:]) == (3, *(c.image_size,) * 2),
        shape=lambda c: f"(B, 3, {c.image_size}, {c.image_size})", size_axis=None,
        default_size=lambda c: c.image_size, grid=lambda c, n: (n // c.patch_size,) * 2),
    "video": ModalityParts(
        codecs.VideoEncoder, codecs.VideoDecoder, regression_loss,
        accepts=lambda c, x: (x.dim() == 5 and x.shape[1] == 3 and x.shape[2] % c.tubelet_size
                              == 0 and tuple(x.shape[3:]) == (c.video_size,) * 2),
        shape=lambda c: (f"(B, 3, T_frames (multiple of {c.tubelet_size}), {c.video_size}, "
                         f"{c.video_size})"),
        size_axis=2, default_size=lambda c: c.video_frames, grid=_video_grid),
}
assert tuple(REGISTRY) == MODALITIES, "one entry per row of pipeline.modalities.TABLE"
MODALITY_INDEX = {name: i for i, name in enumerate(MODALITIES)}
