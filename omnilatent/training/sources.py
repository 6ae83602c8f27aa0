"""Where training batches come from: the shard loader, raw videos, or synthetic data.

Sizes that the data fixes (image and frame size, frames per clip, mel bins and frames) come
from the prepare config (the manifest, or the first sample) and become the model's; when a
model or checkpoint already exists they are checked against it and a mismatch is refused with
the field names, never trained on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnilatent.config import OmniLatentConfig
from omnilatent.errors import ConfigError
from omnilatent.training.data import SyntheticMultimodalDataset, build_dataloader
from omnilatent.training.distributed import SINGLE, DistributedContext, rank_loader
from pipeline.config import PrepareConfig
from pipeline.loader.shard_loader import build_shard_loader
from pipeline.shards.manifest import MANIFEST_NAME, read_manifest
from pipeline.shards.schema import expected_from_config
from pipeline.shards.shardset import resolve_shards
from pipeline.tokenizer import TokenizerFn


@dataclass
class DataSource:
    """A loader plus what the trainer needs to know about the data behind it."""

    loader: Any
    expected: dict[str, Any] | None  # sizes the data fixes (None: synthetic, the model's)
    corpus_has_text: bool | None  # None: unknown in advance
    description: str
    prepare_config: PrepareConfig | None = None  # how the data was prepared, for the card


def shard_source(shards: str, batch_size: int, *, seed: int, workers: int,
                 tokenizer: TokenizerFn, max_text_len: int,
                 shuffle_buffer: int = 1000, pin_memory: bool = False) -> DataSource:
    """The streaming loader over prepared shards (a folder, a tar, or a brace pattern); of a
    folder, its train split only: its eval videos are held out (`pipeline.shards.split`).
    `pin_memory`: True when the trainer's device is CUDA (see `build_shard_loader`)."""
    resolved = resolve_shards(shards, split="train")
    loader = build_shard_loader(shards, batch_size, tokenizer=tokenizer,
                                max_text_len=max_text_len, seed=seed, num_workers=workers,
                                shuffle_buffer=shuffle_buffer, split="train",
                                pin_memory=pin_memory)
    # a prepared folder, or its shards/*.tar given as files or a pattern
    folder = Path(shards) if Path(shards).is_dir() else Path(resolved.urls[0]).parent.parent
    manifest = read_manifest(folder)
    if manifest is None:
        raise ConfigError(f"no {MANIFEST_NAME} found for {shards}; pass the folder written by "
                          "`omni prepare` once it is complete (all --part runs done)")
    clips_with_text = manifest.splits.get("train", manifest.totals).get("clips_with_text")
    return DataSource(loader, expected_from_config(manifest.config),
                      None if clips_with_text is None else clips_with_text > 0,
                      f"{len(resolved.urls)} train shard(s) from {shards}", manifest.config)


def video_dir_source(video_dir: Path, batch_size: int, *, seed: int, workers: int,
                     tokenizer: TokenizerFn, max_text_len: int, clip_duration: float,
                     clip_stride: float, pin_memory: bool = False) -> DataSource:
    """Raw videos decoded on the fly by the same pipeline code as `omni prepare`;
    `pin_memory` as for `shard_source`."""
    from omnilatent.training.video_dataset import VideoWatchingDataset, video_watching_loader

    prepare = PrepareConfig(clip_duration=clip_duration, clip_stride=clip_stride)
    dataset = VideoWatchingDataset.from_prepare_config(video_dir, prepare, tokenizer,
                                                       max_text_len=max_text_len, seed=seed)
    loader = video_watching_loader(dataset, batch_size, num_workers=workers, pin_memory=pin_memory)
    return DataSource(loader, expected_from_config(prepare), dataset.corpus_has_text,
                      f"{len(dataset.videos)} video(s) from {video_dir}, decoded on the fly",
                      prepare)


def synthetic_source(config: OmniLatentConfig, batch_size: int, *, length: int, seed: int,
                     workers: int, context: DistributedContext = SINGLE) -> DataSource:
    """Seeded synthetic samples in the sizes of the model ``config`` describes
    (`SyntheticMultimodalDataset`); under torchrun each rank reads its share of every global
    batch (`rank_loader`)."""
    dataset = SyntheticMultimodalDataset(config, length=length, seed=seed)
    loader = (rank_loader(dataset, batch_size, context, seed=seed, num_workers=workers)
              if context.enabled
              else build_dataloader(dataset, batch_size, seed=seed, num_workers=workers))
    return DataSource(loader, None, True, f"{length} synthetic samples (seed {seed})")
