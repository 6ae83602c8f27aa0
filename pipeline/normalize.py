"""The model's units for pixels and log-mels, both directions in one place.

Batches keep their storage dtypes until they reach the device: the loader (and `omni
generate`'s inputs) deliver pixels as uint8 and the log-mel as float16, a quarter and half of
the bytes of float32 to pass between processes and to copy to the GPU. `to_model_units` (or
`to_device_units`, `batch_to_device`) maps them there, after the copy; `omni generate` maps
model outputs back (`unit_to_pixels`, `model_to_mel`) before writing files. Keeping each pair
side by side is what keeps them exact inverses.

- Pixels: uint8 x -> x / 127.5 - 1, in [-1, 1] (0 -> -1, 255 -> 1). A loader batch's mp4
  clips arrive as I420 planes, (B, T, 3H/2, W) uint8: half the bytes of RGB, converted to RGB
  on the device first (`i420_to_rgb`), to the pixels the CPU's swscale gives, bit for bit.
- Log-mel: (log_mel - MEL_CENTER) / MEL_SCALE (`pipeline.shards`: silence -13.8 -> -1.96).

The dtype says which units a tensor is in: uint8 video and image and float16 audio are stored
values; float32 is already model units (the synthetic dataset and `collate_multimodal` of a
user's own dataset produce them) and passes through unchanged; text ids pass through as they
are. The divisions run against a divisor tensor on the data's own device: CUDA turns a division
by a Python number into a multiplication by its reciprocal (one bit less exact), and the
results must be bit-identical wherever they are computed."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.errors import PipelineError
from pipeline.modalities import MODALITIES, TABLE
from pipeline.shards.schema import MEL_CENTER, MEL_SCALE

PIXEL_SCALE = 127.5
# I420 (yuv420p) frames as prepared clips carry them (colorspace and range unspecified) are
# read as swscale reads them, BT.601 limited range, and by the same fixed-point arithmetic as
# its x86 SIMD yuv2rgb (the path `decode_member` takes on these machines): each term is the
# high 16 bits of a 16-bit product (pmulhw), of luma (Y * 8 - 16 * 8) and chroma
# (C * 8 - 128 * 8), with these coefficients: Y gain 255/219, V to R, U to B, U to G and V
# to G, times 2^13 rounded (swscale's yCoeff, vrCoeff, ubCoeff, ugCoeff, vgCoeff).
_I420_GAINS = (9539, 13075, 16525, -3209, -6660)
# The dtypes a modality's tensor may arrive in: stored values, or float32 model units.
STORED_DTYPES = {row.name: getattr(torch, row.stored_dtype) for row in TABLE if row.stored_dtype}


def pixels_to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 (x / 255 - 0.5) / 0.5 = x / 127.5 - 1, in [-1, 1]."""
    return pixels.to(torch.float32, copy=True).div_(_divisor(PIXEL_SCALE, pixels)).sub_(1.0)


def unit_to_pixels(values: torch.Tensor) -> torch.Tensor:
    """Model pixels in [-1, 1] back to uint8: rounded to the nearest level, clipped to 0..255.

    Exact inverse of `pixels_to_unit` on its outputs; a model's values outside [-1, 1] clip."""
    return values.detach().float().add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)


def mel_to_model(log_mel: torch.Tensor) -> torch.Tensor:
    """Stored log-mel (any float dtype) to the model's float32 units."""
    return log_mel.to(torch.float32, copy=True).sub_(MEL_CENTER).div_(_divisor(MEL_SCALE, log_mel))


def model_to_mel(values: torch.Tensor) -> torch.Tensor:
    """The model's mel units back to float32 log-mel, as `pipeline.media.audio.log_mel` makes it."""
    return values.detach().float().mul(MEL_SCALE).add_(MEL_CENTER)


def _divisor(value: float, like: torch.Tensor) -> torch.Tensor:
    """`value` as a float32 scalar tensor on `like`'s device: a true division on any device
    (CUDA multiplies by the reciprocal of a Python number). `torch.full` launches a fill,
    where a copy from the host would wait for the device's queue."""
    return torch.full((), value, dtype=torch.float32, device=like.device)


def i420_to_rgb(planes: torch.Tensor) -> torch.Tensor:
    """I420 frames (..., T, 3H/2, W) uint8 (per frame the yuv420p frame buffer: H rows of Y,
    then the H/2 x W/2 values of U, then V's) to RGB (..., 3, T, H, W) uint8 on their own
    device, with nothing read back to the host.

    Each chroma sample covers its 2x2 luma pixels, and the arithmetic is swscale's x86 SIMD
    conversion (`_I420_GAINS`), so the pixels equal what `decode_member` gets from swscale on
    the CPU, bit for bit (tests/test_normalize.py; swscale's C fallback, on other CPUs and
    for the last columns of widths that are not a multiple of 16, rounds its tables
    differently, by at most a level or two)."""
    *lead, frames, rows, width = planes.shape
    height = rows * 2 // 3
    if planes.dtype != torch.uint8 or rows != height * 3 // 2 or height % 2 or width % 2:
        raise PipelineError(f"I420 frames must be uint8 (..., T, 3H/2, W) with H and W even, "
                            f"got {planes.dtype} {tuple(planes.shape)}")
    y_gain, v_to_r, u_to_b, u_to_g, v_to_g = _I420_GAINS
    luma = planes[..., :height, :].int().mul_(8).sub_(128).mul_(y_gain).bitwise_right_shift_(16)
    chroma = planes[..., height:, :].reshape(*lead, frames, 2, height // 2, 1, width // 2, 1)
    chroma = chroma.expand(*lead, frames, 2, height // 2, 2, width // 2, 2)
    chroma = chroma.reshape(*lead, frames, 2, height, width).int().mul_(8).sub_(1024)
    u, v = chroma.unbind(-3)  # (..., T, H, W) each, from (..., T, 2, H, W)
    red = luma + (v * v_to_r >> 16)
    green = luma + (u * u_to_g >> 16) + (v * v_to_g >> 16)
    blue = luma + (u * u_to_b >> 16)
    rgb = torch.stack((red, green, blue), dim=-4)  # (..., 3, T, H, W)
    return rgb.clamp_(0, 255).to(torch.uint8)


def to_model_units(modality: str, x: torch.Tensor) -> torch.Tensor:
    """`x` of `modality` in the model's units: uint8 video/image -> `pixels_to_unit`, float16
    audio -> `mel_to_model`, float32 (already units) and text unchanged; any other dtype is
    refused. uint8 video of 4 dims, (B, T, 3H/2, W), is I420 (the loader's mp4 clips): it is
    converted to RGB (`i420_to_rgb`) first, giving (B, 3, T, H, W) units as a 5-dim RGB
    batch does. A uint8 image batch is channels last, (B, S, S, 3), as JPEGs decode: its
    channels are put first here (a transposing copy the loader's CPU no longer makes).
    Call it after the copy to the device, so the smaller stored dtype travels."""
    if modality == "text":
        return x
    stored = STORED_DTYPES.get(modality)
    if stored is None:
        raise PipelineError(f"unknown modality {modality!r}; expected one of text, "
                            f"{', '.join(STORED_DTYPES)}")
    if x.dtype == torch.float32:
        return x
    if x.dtype != stored:
        raise PipelineError(f"{modality} arrived as {x.dtype}; expected {stored} (stored "
                            f"values) or torch.float32 (model units)")
    if modality == "video" and x.dim() == 4:
        x = i420_to_rgb(x)  # (B, T, 3H/2, W) -> (B, 3, T, H, W)
    if modality == "image" and x.dim() == 4:
        x = x.permute(0, 3, 1, 2).contiguous()  # (B, S, S, 3) -> (B, 3, S, S)
    return pixels_to_unit(x) if stored == torch.uint8 else mel_to_model(x)


def to_device_units(modality: str, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`x` copied to `device` (asynchronously when it is in pinned memory) and then turned into
    model units there (`to_model_units`)."""
    return to_model_units(modality, x.to(device, non_blocking=True))


def batch_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch with every tensor on `device` and each modality in model units; other values
    (keys, metadata) as they are."""
    return {key: (to_device_units(key, value, device) if key in MODALITIES
                  else value.to(device, non_blocking=True))
            if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}
