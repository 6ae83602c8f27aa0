"""Batches for the trainer: collation, a resumable seeded loader and a synthetic dataset.

The synthetic dataset exists to check the training loop and memory without real data: every
sample belongs to one of a few latent classes and each modality carries a class-specific
pattern plus noise, so cross-modal prediction is learnable and a falling loss means something."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from omnilatent.checkpoint.json_values import is_count
from omnilatent.config import OmniLatentConfig
from omnilatent.errors import ConfigError
from pipeline.tokenizer import pad_texts

Batch = dict[str, Any]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffle: each (seed, epoch) its own order, the same on
    every run, so a resumed run reshuffles as the uninterrupted one did."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def collate_multimodal(samples: Sequence[dict[str, Any]]) -> Batch:
    """Stack per-sample dicts into a batch.

    Tensors are stacked; ``text`` (L_i,) is right-padded to the longest in the batch by the
    loaders' own rule (`pipeline.tokenizer.pad_texts`); every other value (metadata) is
    gathered into a list. Keys missing from any sample are dropped, so a batch only claims
    modalities that all of its samples hold."""
    if not samples:
        raise ConfigError("cannot collate an empty list of samples")
    keys = set(samples[0])
    for sample in samples[1:]:
        keys &= set(sample)
    batch: Batch = {}
    for key in sorted(keys):
        values = [sample[key] for sample in samples]
        if key == "text":
            batch[key] = pad_texts(values)  # (B, L)
        elif isinstance(values[0], Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


class ResumableLoader:
    """Iterates a map-style dataset in a seeded order per epoch and can resume at any batch.

    Each ``iter()`` runs the rest of the current epoch. The position (epoch, batch) is
    advanced *before* a batch is handed out, so a checkpoint taken after training on a batch
    records it as consumed and a resumed run continues with the next one."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, shuffle: bool = True,
                 num_workers: int = 0,
                 collate_fn: Callable[[Sequence[dict[str, Any]]], Batch] = collate_multimodal,
                 ) -> None:
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be > 0, got {batch_size}")
        if len(dataset) < batch_size:  # type: ignore[arg-type]
            raise ConfigError(f"the dataset holds {len(dataset)} samples, "  # type: ignore[arg-type]
                              f"fewer than one batch ({batch_size}); lower --batch-size")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.epoch = 0
        self.batch = 0

    def __len__(self) -> int:
        return len(self.dataset) // self.batch_size  # type: ignore[arg-type]

    def _order(self) -> list[int]:
        n = len(self.dataset)  # type: ignore[arg-type]
        if not self.shuffle:
            return list(range(n))
        return torch.randperm(n, generator=epoch_generator(self.seed, self.epoch)).tolist()

    def __iter__(self) -> Iterator[Batch]:
        order = self._order()[self.batch * self.batch_size : len(self) * self.batch_size]
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=order,
                            num_workers=self.num_workers, collate_fn=self.collate_fn,
                            drop_last=True, persistent_workers=False)
        for batch in loader:
            self.batch += 1
            yield batch
        self.epoch += 1
        self.batch = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state_dict``; ConfigError (nothing changed) for any other state,
        e.g. that of a shard loader when a run is resumed on other data."""
        valid = (isinstance(state, dict) and set(state) == {"epoch", "batch"}
                 and all(is_count(v) for v in state.values()))
        if not valid:
            raise ConfigError(f"not a position of this loader (epoch and batch, integers "
                              f">= 0): {str(state)[:100]}")
        self.epoch, self.batch = state["epoch"], state["batch"]


def build_dataloader(
    dataset: Dataset, batch_size: int, seed: int = 0, num_workers: int = 0, shuffle: bool = True
) -> ResumableLoader:
    """The loader the trainer expects for map-style datasets (resumable, seeded)."""
    return ResumableLoader(dataset, batch_size, seed=seed, shuffle=shuffle, num_workers=num_workers)


class SyntheticMultimodalDataset(Dataset):
    """Seeded samples with text, audio, image and video tied together by a latent class.

    Sample ``i`` depends only on ``(seed, i)``, so any worker count gives the same data.
    Shapes follow the model config: text (text_len,), audio (n_mels, audio_frames),
    image (3, image_size, image_size), video (3, video_frames, video_size, video_size)."""

    def __init__(self, config: OmniLatentConfig, length: int = 10_000, seed: int = 0,
                 num_classes: int = 8, text_len: int = 32, noise: float = 0.1,
                 offset: float = 0.5) -> None:
        if length <= 0 or num_classes <= 0 or text_len <= 0:
            raise ConfigError("length, num_classes and text_len must be > 0")
        self.config = config
        self.length = length
        self.seed = seed
        self.num_classes = num_classes
        self.text_len = text_len
        self.noise = noise
        self.offset = offset  # a shared mean: the first thing a model learns, visibly
        self.token_span = max(1, min(16, (config.vocab_size - 1) // num_classes))

    def __len__(self) -> int:
        return self.length

    def _grating(self, cls: int, size: int, shift: float = 0.0) -> Tensor:
        """A class-specific oriented sine grating, (3, size, size) in [-1, 1]."""
        angle = math.pi * cls / self.num_classes
        freq = 2.0 + cls % 4
        coords = torch.linspace(0, 1, size)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        phase = 2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle) + shift)
        colour = torch.tensor([1.0, 0.5 + 0.5 * math.cos(cls), 0.5 - 0.5 * math.sin(cls)])
        return torch.sin(phase)[None] * colour[:, None, None]  # (3, size, size)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        cfg = self.config
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        cls = int(torch.randint(self.num_classes, (1,), generator=g))

        n_tokens = int(torch.randint(self.text_len // 2, self.text_len + 1, (1,), generator=g))
        offsets = torch.randint(self.token_span, (n_tokens,), generator=g)
        text = 1 + (cls * self.token_span + offsets) % (cfg.vocab_size - 1)  # (L,)

        centre = (cls + 0.5) * cfg.n_mels / self.num_classes
        bins = torch.arange(cfg.n_mels, dtype=torch.float32)
        envelope = torch.exp(-0.5 * ((bins - centre) / 6.0) ** 2)  # (M,)
        beat = torch.sin(torch.linspace(0, 2 * math.pi * (1 + cls), cfg.audio_frames))  # (T,)
        audio = envelope[:, None] * (1 + 0.5 * beat[None]) * 2.0 - 1.0 + self.offset  # (M, T)
        audio = audio + self.noise * torch.randn(audio.shape, generator=g)

        image = self._grating(cls, cfg.image_size) + self.offset
        image = image + self.noise * torch.randn(image.shape, generator=g)

        speed = 0.02 * (1 + cls % 3)
        video = torch.stack([self._grating(cls, cfg.video_size, shift=t * speed)
                             for t in range(cfg.video_frames)], dim=1)  # (3, T, H, W)
        video = video + self.offset + self.noise * torch.randn(video.shape, generator=g)
        return {"text": text.long(), "audio": audio, "image": image, "video": video}
