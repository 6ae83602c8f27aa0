"""Train on a folder of raw videos without preparing shards first.

Each video goes through exactly the functions `omni prepare` uses (probe, then
`pipeline.prepare.sample.video_context` for the transcript and where untimed words go, windowing,
log-mel, transcript alignment), and each sample becomes tensors through the shard loader's own
`to_tensors` and `collate`, so a batch from here equals one from the prepared shards except for
the JPEG/H.264 compression the shards add.

Two ways to read the folder, one decode path (`iter_windows` -> `sample_fields` ->
`to_tensors`):

- **map-style** (the seed's API): ``VideoWatchingDataset(video_dir, config, ...)`` probes every
  video once (no decoding) and numbers every (video, window); ``dataset[i]`` decodes that one
  window, so ``DataLoader(dataset, shuffle=True, num_workers=...)`` works as for any dataset.
  A window is decoded from its video's start (there is no seeking), so a late window of a long
  video costs as much as decoding up to it: fine for clips of minutes, not hours.
- **streaming** (`video_watching_loader`, what ``omni train --video-dir`` uses): videos in a
  seeded order per epoch, each decoded once from start to end, nothing probed up front; for
  large folders and long videos. Its loader keeps a position, so a resume is exact.

Unlike `omni prepare`, decoding runs inside the training process (or its loader workers)
without a time limit or crash isolation: the streaming form skips (and counts) a video that
raises, the map-style form raises naming the video and window, and a decoder crash ends the
run. Prepare shards for large or untrusted corpora."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from omnilatent.config import OmniLatentConfig
from omnilatent.errors import ConfigError, OmniLatentError
from omnilatent.training.data import epoch_generator
from pipeline.config import PrepareConfig
from pipeline.errors import PipelineError
from pipeline.loader.batches import collate
from pipeline.loader.samples import to_tensors
from pipeline.media.decode import iter_windows, probe, video_end, window_from
from pipeline.media.discover import VideoSource, discover_videos
from pipeline.media.subtitles import sidecar_path
from pipeline.media.windows import Window, window_count
from pipeline.modalities import MAX_TEXT_LEN
from pipeline.prepare.sample import VideoContext, sample_fields, video_context
from pipeline.shards.schema import MEMBER_IMAGE, MEMBER_JSON, MEMBER_MEL, MEMBER_TEXT, clip_member
from pipeline.tokenizer import TokenizerFn, byte_tokenizer

collate_video_watching = collate
"""Batches in the shard loader's format and stored dtypes: video (B,3,T,H,W) and image uint8,
audio (B, n_mels, T) float16 log-mel, text (B, L) padded with 0, has_text, __key__, meta
(`pipeline.normalize.to_model_units` maps them to model units on the device)."""


class VideoWatchingDataset(Dataset):
    """Clip windows of every video under ``video_dir``: ``dataset[i]`` is one window, as the
    shard loader yields a sample (``video`` (T, H, W, 3) and ``image`` (S, S, 3) uint8,
    ``audio`` (n_mels, T_mel) float16, ``text`` (L,) token ids, ``__key__``, ``meta``).

    The constructor probes every video once to number the windows (``len``); a video that
    cannot be probed, or is shorter than one clip, holds none and is named in ``failures``.
    `from_prepare_config` builds the same dataset unnumbered, for the streaming loader
    (`video_watching_loader`); it numbers the windows on first ``len`` or index."""

    def __init__(self, video_dir: str | Path, config: OmniLatentConfig,
                 clip_duration: float = 2.0, clip_stride: float = 1.0,
                 tokenizer_fn: TokenizerFn = byte_tokenizer, max_text_len: int = MAX_TEXT_LEN,
                 seed: int = 0) -> None:
        fps = config.video_frames / clip_duration
        if abs(fps - round(fps)) > 1e-6:
            raise ConfigError(f"video_frames ({config.video_frames}) / clip_duration "
                              f"({clip_duration}) must be a whole frame rate, got {fps:g}")
        prepare = PrepareConfig(clip_duration=clip_duration, clip_stride=clip_stride,
                                fps=round(fps), video_size=config.video_size,
                                image_size=config.image_size, n_mels=config.n_mels)
        self._setup(Path(video_dir), prepare, tokenizer_fn, max_text_len, seed)
        self.build_index()

    @classmethod
    def from_prepare_config(cls, video_dir: str | Path, prepare: PrepareConfig,
                            tokenizer_fn: TokenizerFn = byte_tokenizer,
                            max_text_len: int = MAX_TEXT_LEN,
                            seed: int = 0) -> VideoWatchingDataset:
        dataset = cls.__new__(cls)
        dataset._setup(Path(video_dir), prepare, tokenizer_fn, max_text_len, seed)
        return dataset

    def _setup(self, video_dir: Path, prepare: PrepareConfig, tokenizer_fn: TokenizerFn,
               max_text_len: int, seed: int) -> None:
        super().__init__()
        self.video_dir = video_dir
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
        self._windows: list[tuple[int, int]] | None = None  # (video number, window index)
        self._contexts: dict[int, VideoContext] = {}

    def build_index(self) -> None:
        """Number every window of every video, probing each video once (its streams, and its
        end by demuxing, not decoding: container durations cover longer audio)."""
        windows: list[tuple[int, int]] = []
        for number, source in enumerate(self.videos):
            try:
                info = probe(source.path)
                end = video_end(source.path) or info.duration_hint
                context = self._context(source, info)
            except PipelineError as err:
                self.failures[source.rel_path] = str(err)
                continue
            count = window_count(end, self.prepare) if end else 0
            if count == 0:
                self.failures[source.rel_path] = (
                    f"shorter than one {self.prepare.clip_duration:g} s clip"
                    if end else "its length is unknown (no timestamps, no stated duration)")
                continue
            self._contexts[number] = context
            windows += [(number, index) for index in range(count)]
        if not windows:
            raise ConfigError(f"no video under {self.video_dir} holds a clip window: "
                              f"{dict(list(self.failures.items())[:3])}")
        self._windows = windows

    def _index(self) -> list[tuple[int, int]]:
        if self._windows is None:
            self.build_index()
        assert self._windows is not None  # build_index sets it or raises
        return self._windows

    def __len__(self) -> int:
        return len(self._index())

    def __getitem__(self, index: int) -> dict[str, Any]:
        windows = self._index()
        if not -len(windows) <= index < len(windows):
            raise IndexError(f"window {index} of {len(windows)}")
        number, window_index = windows[index]
        source = self.videos[number]
        try:
            window = self._decode_window(source, window_index)
        except PipelineError as err:
            raise OmniLatentError(f"{source.rel_path}, window {window_index}: {err}") from err
        members = self._members(window, self._contexts[number])
        return next(to_tensors([members], self.tokenizer_fn, self.max_text_len))

    def _decode_window(self, source: VideoSource, index: int) -> Window:
        """Window ``index`` of a video, bit for bit the whole-video decode's (`window_from`)."""
        window = window_from(source.path, self.prepare, index * self.prepare.clip_stride)
        if window is not None:
            return replace(window, index=index)
        raise OmniLatentError(f"{source.rel_path} ends before its window {index}, which its "
                              "probed length promised; prepare it with `omni prepare`")

    def _context(self, source: VideoSource, info: Any) -> VideoContext:
        return video_context(source, info, clip_encoding="npy",
                             follow_symlinks=self.prepare.follow_symlinks).context

    def _members(self, window: Window, context: VideoContext) -> dict[str, Any]:
        """One window's members, decoded, as the shard loader would read them."""
        f = sample_fields(window, context, self.prepare)
        return {"__key__": f.key, MEMBER_JSON: f.meta.to_dict(), MEMBER_MEL: f.mel,
                MEMBER_IMAGE: f.image, clip_member("npy"): f.frames, MEMBER_TEXT: f.text}

    def video_samples(self, source: VideoSource) -> Iterator[dict[str, Any]]:
        """Decoded members of each window of one video, in time order, from one decode."""
        context = self._context(source, probe(source.path))
        for window in iter_windows(source.path, self.prepare):
            yield self._members(window, context)

    def _order(self) -> list[VideoSource]:
        generator = epoch_generator(self.seed, self.epoch)
        return [self.videos[i] for i in torch.randperm(len(self.videos),
                                                       generator=generator).tolist()]


@dataclass
class _VideoStream(IterableDataset):
    """The streaming form: the windows of every video in the dataset's seeded order for its
    epoch, each video decoded once; loader workers split the videos between them."""

    dataset: VideoWatchingDataset

    def __iter__(self) -> Iterator[dict[str, Any]]:
        dataset = self.dataset
        info = get_worker_info()
        videos = dataset._order()
        if info is not None:
            videos = videos[info.id::info.num_workers]
        for source in videos:
            try:
                yield from to_tensors(dataset.video_samples(source), dataset.tokenizer_fn,
                                      dataset.max_text_len)
            except PipelineError as err:
                dataset.failures[source.rel_path] = str(err)


@dataclass
class VideoWatchingLoader:
    """Batches of a `VideoWatchingDataset` in its streaming form (no index needed), resumable:
    each ``iter()`` runs (the rest of) one epoch; the position is (epoch, batches), and
    resuming re-decodes and drops the batches already consumed, so with the same worker count
    the next batch is the one that would have come next. `pin_memory` (for a CUDA device
    only) puts the batches in pinned memory."""

    dataset: VideoWatchingDataset
    batch_size: int
    num_workers: int = 0
    pin_memory: bool = False
    epoch: int = 0
    batches: int = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.epoch = self.epoch
        loader = DataLoader(_VideoStream(self.dataset), batch_size=self.batch_size,
                            num_workers=self.num_workers, collate_fn=collate_video_watching,
                            pin_memory=self.pin_memory)
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
