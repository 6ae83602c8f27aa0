"""Model units on the device: stored dtypes in, bit-identical to the former host path out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.training import TrainConfig, Trainer
from omnilatent.training.rng import seed_everything
from pipeline.errors import PipelineError
from pipeline.loader.shard_loader import build_shard_loader
from pipeline.normalize import batch_to_device, to_device_units, to_model_units
from pipeline.shards.schema import MEL_CENTER, MEL_SCALE
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
    for modality, shape in (("video", (1, 2, 2, 8, 8)), ("image", (1, 2, 8, 16))):
        x = pixels.reshape(shape)
        units = to_model_units(modality, x)
        assert units.dtype == torch.float32 and torch.equal(units, old_pixels(x))
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
    assert torch.equal(moved["image"], old_pixels(batch["image"]))
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
