"""Train on a folder of raw videos without preparing shards first.

Each video goes through exactly the functions `omni prepare` uses (probe, then
`pipeline.sample.video_context` for the transcript and where untimed words go, windowing,
log-mel, transcript alignment), and each sample becomes tensors through the shard loader's own
`to_tensors` and `collate`, so a batch from here equals one from the prepared shards except for
the JPEG/H.264 compression the shards add.

Unlike `omni prepare`, decoding runs inside the training process (or its loader workers)
without a time limit or crash isolation: a video that raises is skipped and counted, but a
decoder crash ends the run. Prepare shards for large or untrusted corpora.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from omnilatent.config import OmniLatentConfig
from omnilatent.errors import ConfigError, OmniLatentError
from pipeline.config import PrepareConfig
from pipeline.decode import iter_windows, probe
from pipeline.discover import VideoSource, discover_videos
from pipeline.errors import PipelineError
from pipeline.loader import collate, to_tensors
from pipeline.sample import sample_fields, video_context
from pipeline.schema import MEMBER_IMAGE, MEMBER_JSON, MEMBER_MEL, MEMBER_TEXT, clip_member
from pipeline.tokenizer import TokenizerFn, byte_tokenizer
from pipeline.transcripts import sidecar_path

collate_video_watching = collate
"""Batches in the shard loader's format and stored dtypes: video (B,3,T,H,W) and image uint8,
audio (B, n_mels, T) float16 log-mel, text (B, L) padded with 0, has_text, __key__, meta
(`pipeline.normalize.to_model_units` maps them to model units on the device)."""


class VideoWatchingDataset(IterableDataset):
    """Clip windows of every video under ``video_dir``, decoded as they are needed.

    Videos are visited in a seeded order that changes each epoch (``set_epoch``); windows of a
    video come in time order. Loader workers split the videos between them.
    """

    def __init__(
        self,
        video_dir: str | Path,
        config: OmniLatentConfig,
        clip_duration: float = 2.0,
        clip_stride: float = 1.0,
        tokenizer_fn: TokenizerFn = byte_tokenizer,
        max_text_len: int = 128,
        seed: int = 0,
    ) -> None:
        fps = config.video_frames / clip_duration
        if abs(fps - round(fps)) > 1e-6:
            raise ConfigError(f"video_frames ({config.video_frames}) / clip_duration "
                              f"({clip_duration}) must be a whole frame rate, got {fps:g}")
        prepare = PrepareConfig(clip_duration=clip_duration, clip_stride=clip_stride,
                                fps=round(fps), frame_size=config.video_size,
                                image_size=config.image_size, n_mels=config.n_mels)
        self._setup(Path(video_dir), prepare, tokenizer_fn, max_text_len, seed)

    @classmethod
    def from_prepare_config(cls, video_dir: str | Path, prepare: PrepareConfig,
                            tokenizer_fn: TokenizerFn = byte_tokenizer, max_text_len: int = 128,
                            seed: int = 0) -> VideoWatchingDataset:
        dataset = cls.__new__(cls)
        dataset._setup(Path(video_dir), prepare, tokenizer_fn, max_text_len, seed)
        return dataset

    def _setup(self, video_dir: Path, prepare: PrepareConfig, tokenizer_fn: TokenizerFn,
               max_text_len: int, seed: int) -> None:
        super().__init__()
        self.prepare = prepare
        self.tokenizer_fn = tokenizer_fn
        self.max_text_len = max_text_len
        self.seed = seed
        self.epoch = 0
        self.videos: list[VideoSource] = discover_videos(video_dir, prepare.follow_symlinks)
        if not self.videos:
            raise ConfigError(f"no videos found under {video_dir}")
        self.failures: dict[str, str] = {}  # filled per process (workers keep their own)
        # True when any video has a sidecar transcript; embedded subtitles are only known
        # once a video is opened, so otherwise unknown (None): text tasks then skip batches
        # without text.
        self.corpus_has_text: bool | None = (
            True if any(sidecar_path(v.path) for v in self.videos) else None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[VideoSource]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return [self.videos[i] for i in torch.randperm(len(self.videos),
                                                       generator=generator).tolist()]

    def video_samples(self, source: VideoSource) -> Iterator[dict[str, Any]]:
        """Decoded members of each window of one video, as the shard loader would yield."""
        context = video_context(source, probe(source.path, self.prepare), clip_encoding="npy",
                                follow_symlinks=self.prepare.follow_symlinks).context
        for window in iter_windows(source.path, self.prepare):
            f = sample_fields(window, context, self.prepare)
            yield {"__key__": f.key, MEMBER_JSON: f.meta.to_dict(), MEMBER_MEL: f.mel,
                   MEMBER_IMAGE: f.image, clip_member("npy"): f.frames, MEMBER_TEXT: f.text}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        videos = self._order()
        if info is not None:
            videos = videos[info.id::info.num_workers]
        for source in videos:
            try:
                yield from to_tensors(self.video_samples(source), self.tokenizer_fn,
                                      self.max_text_len)
            except PipelineError as err:
                self.failures[source.rel_path] = str(err)


class VideoWatchingLoader:
    """Batches of a `VideoWatchingDataset`, resumable: each ``iter()`` runs (the rest of) one
    epoch; the position is (epoch, batches), and resuming re-decodes and drops the batches
    already consumed, so with the same worker count the next batch is the one that would have
    come next. `pin_memory` (for a CUDA device only) puts the batches in pinned memory."""

    def __init__(self, dataset: VideoWatchingDataset, batch_size: int,
                 num_workers: int = 0, pin_memory: bool = False) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.epoch = 0
        self.batches = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.set_epoch(self.epoch)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                            collate_fn=collate_video_watching, pin_memory=self.pin_memory)
        skip = self.batches
        produced = 0
        for batch in loader:
            produced += 1
            if produced <= skip:
                continue
            self.batches += 1
            yield batch
        if produced == 0:
            raise OmniLatentError(
                "no video yielded a clip; check the folder (every video failed or is shorter "
                f"than one clip): {dict(list(self.dataset.failures.items())[:3])}")
        self.epoch += 1
        self.batches = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.batches, "workers": self.num_workers}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("workers", 0)) != self.num_workers:
            raise ConfigError(f"this run was checkpointed with --workers {state.get('workers')}; "
                              "resume with the same worker count to see the same batches")
        self.epoch, self.batches = int(state["epoch"]), int(state["batches"])


def video_watching_loader(dataset: VideoWatchingDataset, batch_size: int,
                          num_workers: int = 0, pin_memory: bool = False) -> VideoWatchingLoader:
    return VideoWatchingLoader(dataset, batch_size, num_workers, pin_memory)
