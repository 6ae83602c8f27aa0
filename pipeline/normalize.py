"""The model's units for pixels and log-mels, both directions in one place.

The loader maps stored samples into model units (`pixels_to_unit`, `mel_to_model`);
`omni generate` maps model outputs back (`unit_to_pixels`, `model_to_mel`) before writing
files. Keeping each pair side by side is what keeps them exact inverses.

- Pixels: uint8 x -> x / 127.5 - 1, in [-1, 1] (0 -> -1, 255 -> 1).
- Log-mel: (log_mel - MEL_CENTER) / MEL_SCALE (`pipeline.schema`: silence -13.8 -> -1.96).
"""

from __future__ import annotations

import torch

from pipeline.schema import MEL_CENTER, MEL_SCALE


def pixels_to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 (x / 255 - 0.5) / 0.5 = x / 127.5 - 1, in [-1, 1]."""
    return pixels.to(torch.float32, copy=True).div_(127.5).sub_(1.0)


def unit_to_pixels(values: torch.Tensor) -> torch.Tensor:
    """Model pixels in [-1, 1] back to uint8: rounded to the nearest level, clipped to 0..255.

    Exact inverse of `pixels_to_unit` on its outputs; a model's values outside [-1, 1] clip.
    """
    return values.detach().float().add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)


def mel_to_model(log_mel: torch.Tensor) -> torch.Tensor:
    """Stored log-mel (any float dtype) to the model's float32 units."""
    return log_mel.to(torch.float32, copy=True).sub_(MEL_CENTER).div_(MEL_SCALE)


def model_to_mel(values: torch.Tensor) -> torch.Tensor:
    """The model's mel units back to float32 log-mel, as `pipeline.audio.log_mel` makes it."""
    return values.detach().float().mul(MEL_SCALE).add_(MEL_CENTER)
