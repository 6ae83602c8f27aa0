"""Model units on the device: stored dtypes in, bit-identical to the former host path out."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.training import TrainConfig, Trainer
from omnilatent.training.rng import seed_everything
from pipeline.errors import PipelineError
from pipeline.loader.shard_loader import build_shard_loader
from pipeline.normalize import (
    batch_to_device,
    i420_to_rgb,
    pixels_to_unit,
    to_device_units,
    to_model_units,
)
from pipeline.shards.decode import decode_member, i420_shape
from pipeline.shards.encode import encode_clip
from pipeline.shards.schema import MEL_CENTER, MEL_SCALE
from tests.host_sync import HostSyncRecorder
from tests.test_loader import SMALL, write_shards


def old_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """The loader's worker-side float32 path before batches kept their stored dtypes."""
    return pixels.to(torch.float32, copy=True).div_(127.5).sub_(1.0)


def old_mel(log_mel: torch.Tensor) -> torch.Tensor:
    return log_mel.to(torch.float32, copy=True).sub_(MEL_CENTER).div_(MEL_SCALE)


def every_float16() -> torch.Tensor:
    """All 63488 finite float16 values."""
    values = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    return values[torch.isfinite(values)]


def test_pixels_equal_the_old_path_bit_for_bit() -> None:
    pixels = torch.arange(256, dtype=torch.uint8)
    for modality, shape in (("video", (1, 2, 2, 8, 8)), ("image", (2, 8, 16, 1))):
        x = pixels.reshape(shape)
        units = to_model_units(modality, x)  # an image batch's channels go first
        first = x if modality == "video" else x.permute(0, 3, 1, 2)
        assert units.dtype == torch.float32 and torch.equal(units, old_pixels(first))
        assert units.is_contiguous()
    assert to_model_units("image", pixels)[[0, 255]].tolist() == [-1.0, 1.0]


def test_every_float16_mel_equals_the_old_path_bit_for_bit() -> None:
    mel = every_float16()
    units = to_model_units("audio", mel)
    assert units.dtype == torch.float32 and torch.equal(units, old_mel(mel))


def test_float32_units_and_text_pass_through_unchanged() -> None:
    units = torch.randn(2, 3, 4, 4)
    for modality in ("video", "image", "audio"):
        assert to_model_units(modality, units) is units
    text = torch.tensor([[5, 6, 0]])
    assert to_model_units("text", text) is text


@pytest.mark.parametrize(("modality", "dtype"), [
    ("video", torch.float64), ("video", torch.float16), ("image", torch.int32),
    ("audio", torch.uint8), ("audio", torch.bfloat16), ("audio", torch.float64)])
def test_a_dtype_that_is_neither_stored_nor_units_is_refused(modality: str,
                                                            dtype: torch.dtype) -> None:
    with pytest.raises(PipelineError, match=f"{modality} arrived as {dtype}"):
        to_model_units(modality, torch.zeros(2, 2, dtype=dtype))


def test_an_unknown_modality_is_refused() -> None:
    with pytest.raises(PipelineError, match="unknown modality 'depth'"):
        to_model_units("depth", torch.zeros(2, dtype=torch.uint8))


def test_batch_to_device_converts_modalities_and_keeps_the_rest(tmp_path: Path) -> None:
    write_shards(tmp_path)
    batch = next(iter(build_shard_loader(tmp_path, batch_size=4, shuffle_buffer=0)))
    moved = batch_to_device(batch, torch.device("cpu"))
    assert torch.equal(moved["video"], old_pixels(batch["video"]))
    assert torch.equal(moved["image"], old_pixels(batch["image"].permute(0, 3, 1, 2)))
    assert torch.equal(moved["audio"], old_mel(batch["audio"]))
    assert torch.equal(moved["text"], batch["text"]) and moved["text"].dtype == torch.long
    assert torch.equal(moved["has_text"], batch["has_text"])
    assert moved["__key__"] == batch["__key__"] and moved["meta"] == batch["meta"]
    assert torch.equal(to_device_units("audio", batch["audio"], torch.device("cpu")),
                       moved["audio"])


def _losses(loader: object, steps: int) -> list[tuple[str, float]]:
    seed_everything(0)
    model = OmniLatentModel(OmniLatentConfig(
        hidden_dim=32, num_layers=2, num_heads=4, vocab_size=300, n_mels=SMALL.n_mels,
        audio_frames=SMALL.audio_frames, image_size=SMALL.image_size, patch_size=16,
        video_size=SMALL.video_size, video_frames=SMALL.video_frames))
    config = TrainConfig(steps=steps, lr=1e-3, log_interval=1, device="cpu")
    result = Trainer(model, config, loader).train()
    return [(entry["task"], entry["loss"]) for entry in result.history]


def test_training_on_stored_batches_equals_training_on_float32_units(tmp_path: Path) -> None:
    """The trainer normalises stored batches itself: the same losses as on batches already in
    model units (without that step, uint8 pixels would train as 0..255)."""
    write_shards(tmp_path)

    def loader() -> object:
        return build_shard_loader(tmp_path, batch_size=4, shuffle_shards=False,
                                  shuffle_buffer=0)

    units = [{key: to_model_units(key, value) if key in ("video", "image", "audio") else value
              for key, value in batch.items()} for batch in loader()]
    assert units[0]["video"].dtype == torch.float32
    steps = 4  # crosses the 3-batch epoch; one task of each target modality
    stored = _losses(loader(), steps)
    assert stored == _losses(units, steps)
    targets = {task.split("_to_")[1] if "_to_" in task else task.split("_")[0]
               for task, _ in stored}
    assert targets >= {"video", "image", "audio"}


def colour_clip(size: int) -> np.ndarray:
    """(4, size, size, 3) uint8 frames that are hard on 4:2:0: saturated primaries and
    secondaries, one-pixel stripes of opposite colours (chroma edges between two chroma
    samples, at even and odd columns and rows), and noise."""
    rng = np.random.default_rng(7)
    bars = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255],
                     [255, 0, 255], [255, 255, 255], [0, 0, 0]], np.uint8)
    frames = np.empty((4, size, size, 3), np.uint8)
    columns, quarter, half = np.arange(size), size // 4, size // 2
    for index, frame in enumerate(frames):
        frame[:] = bars[(columns * 8 // size + index) % 8]  # bars, moving
        frame[half:] = bars[(columns + index) % 8]  # a colour change every pixel
        frame[quarter:half, :half] = bars[(np.arange(quarter, half) + index) % 8, None]  # rows
        frame[quarter:half, half:] = rng.integers(0, 256, (half - quarter, size - half, 3))
    return frames


def swscale_rgb24(data: bytes) -> np.ndarray:
    """The frames of an mp4 as swscale converts them to rgb24 by default: (T, H, W, 3)."""
    with av.open(io.BytesIO(data), "r", format="mp4") as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


# 38: U and V do not fill whole rows of W, and swscale converts its last columns in C;
# 112: the default clip size.
@pytest.mark.parametrize("size", [32, 38, 112])
def test_i420_to_rgb_gives_the_pixels_swscale_gives(size: int) -> None:
    """A loader batch's mp4 clip (its yuv420p planes, decoded into an I420 slot) converted on
    the device equals the same clip converted to RGB by swscale on the CPU, bit for bit, in
    the columns swscale's SIMD code converts (all of them at widths that are multiples of
    16); past them swscale's C tables round differently, by at most 2 levels. The shapes are
    those of an RGB batch; swscale's rgb24 is what `decode_member` gives without a slot."""
    frames = colour_clip(size)
    data = encode_clip(frames, "mp4", 4)
    sizes = {"video_frames": 4, "video_size": size}
    rgb = swscale_rgb24(data)  # (T, H, W, 3)
    assert np.array_equal(decode_member("clip.mp4", data, sizes), rgb)
    slot = np.empty(i420_shape(4, size, size), np.uint8)
    planes = decode_member("clip.mp4", data, sizes, out=slot)
    assert planes.shape == (4, size * 3 // 2, size) and np.shares_memory(planes, slot)
    old = torch.from_numpy(rgb).permute(3, 0, 1, 2)  # (3, T, H, W)
    new = i420_to_rgb(torch.from_numpy(planes))
    simd = size // 16 * 16
    assert torch.equal(new[..., :simd], old[..., :simd])
    assert ((new[..., simd:].int() - old[..., simd:].int()).abs() <= 2).all()
    units = to_model_units("video", torch.from_numpy(planes)[None])  # (1, T, 3H/2, W)
    assert units.shape == (1, 3, 4, size, size) and units.dtype == torch.float32
    assert torch.equal(units, pixels_to_unit(new[None]))


def test_i420_to_rgb_reads_nothing_back_from_the_device() -> None:
    """The conversion is tensor ops on the batch's device: no value read to the host, no
    tensor of host data copied to the device (`tests/host_sync.py`)."""
    planes = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 4, 12, 8),
                                                                 dtype=np.uint8))
    recorder = HostSyncRecorder([planes])
    with recorder:
        units = to_model_units("video", planes)
    assert recorder.events == [] and units.shape == (2, 3, 4, 8, 8)


def test_i420_of_an_odd_shape_is_refused() -> None:
    with pytest.raises(PipelineError, match="I420 frames must be"):
        to_model_units("video", torch.zeros(1, 4, 10, 8, dtype=torch.uint8))
