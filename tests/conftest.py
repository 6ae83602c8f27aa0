"""Shared fixtures: tiny model configs so the unit suite stays fast on 2 CPU cores."""

from __future__ import annotations

import os

# One torch thread for the suite and every process it starts: its models are tiny, so a
# second thread buys nothing and, on a loaded machine, spins (README, "CPU threads"). Set
# before torch is imported, which reads it once.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from omnilatent import OmniLatentConfig, OmniLatentModel

TINY = dict(hidden_dim=32, num_layers=2, num_heads=4, vocab_size=300, n_mels=16,
            audio_frames=24, image_size=32, patch_size=16, video_size=32, video_frames=8)


def pytest_configure() -> None:
    """Start prepare's forkserver now, importing tests/faults.py too, so that every worker of
    the session has the test-only faults (a forkserver keeps the preload it started with)."""
    from pipeline.prepare import worker

    worker.PRELOAD.append("tests.faults")  # run from the repository root
    worker.start_forkserver()


@pytest.fixture
def tiny_config() -> OmniLatentConfig:
    return OmniLatentConfig(**TINY)


@pytest.fixture
def tiny_model(tiny_config: OmniLatentConfig) -> OmniLatentModel:
    torch.manual_seed(0)
    return OmniLatentModel(tiny_config)


def make_inputs(cfg: OmniLatentConfig, batch: int = 2, text_len: int = 7,
                seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, cfg.vocab_size, (batch, text_len), generator=g)
    text[0, -2:] = 0  # some padding
    return {
        "text": text,
        "audio": torch.randn(batch, cfg.n_mels, cfg.audio_frames, generator=g),
        "image": torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g),
        "video": torch.randn(batch, 3, cfg.video_frames, cfg.video_size, cfg.video_size,
                             generator=g),
    }


class TextOnEvenSamples(torch.utils.data.Dataset):
    """`inner` with the text of every odd sample emptied: batches whose text comes and goes."""

    def __init__(self, inner: torch.utils.data.Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> dict:
        sample = self.inner[i]
        return sample if i % 2 == 0 else {**sample, "text": torch.zeros(0, dtype=torch.long)}
