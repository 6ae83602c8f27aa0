"""`ShardLoader`: the epochs of `pipeline.loader.samples` stages over DataLoader workers, with
a cursor that resumes mid-epoch; `build_shard_loader` builds it from shard paths or a folder."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.errors import ConfigError, PipelineError
from pipeline.loader import samples as stage
from pipeline.loader.batch_pool import BatchPool, leading
from pipeline.loader.batches import Batch, BatchSlots, slot_layout
from pipeline.loader.samples import Cursor, LoaderStats
from pipeline.normalize import STORED_DTYPES
from pipeline.shards.shardset import ShardSet, resolve_shards
from pipeline.shards.split import Split
from pipeline.tokenizer import TokenizerFn, byte_tokenizer

# The counters the tar stage reports as findings (`LoaderStats.find`).
_FINDING_COUNTERS = ("skipped_samples", "unsafe_members", "corrupt_shards", "surplus_shards")


@dataclass(frozen=True)
class _InSlot:
    """A batch tensor of `shape` that lies at the start of its array in a pool slot."""

    shape: tuple[int, ...]

    def over(self, array: np.ndarray) -> torch.Tensor:
        """The tensor over the slot's `array` (an I420 video fills the first half of its
        array, laid out for RGB clips)."""
        return torch.from_numpy(leading(array, self.shape))


@dataclass
class _Chunk:
    """What a worker sends: a batch (None at its end), its position and its stats news.

    A worker's batch crosses without its large tensors, which stay where the worker wrote
    them: the keys of those in a slot of the loader's `BatchPool` (named by `pool`) hold their
    shape (`_InSlot`) and `resolved` puts them back over this process's mapping of the slot,
    so no pixel crosses; outside a slot (none free) they cross as torch's shared-memory tensors. The
    small ones (text and the row flags) cross as numpy arrays, pickled by value: a tensor
    crosses as a shared-memory file and a socket round trip to the worker, about 1 ms of CPU
    each (`bench/loader.py`, issue 19)."""

    batch: Batch | None
    worker: int
    position: int
    stats: LoaderStats
    pool: str | None = None
    slot: int | None = None

    def sent(self, slots: BatchSlots | None) -> _Chunk:
        """This chunk as a worker sends it (see the class)."""
        if self.batch is None:
            return self
        slot = None if slots is None else slots.hand_on()
        pooled = set() if slots is None or slot is None else slots.in_buffers(self.batch)
        batch = {key: _InSlot(tuple(value.shape)) if key in pooled
                 else value.numpy() if isinstance(value, torch.Tensor) and key not in STORED_DTYPES
                 else value for key, value in self.batch.items()}
        token = None if slots is None or slots.pool is None or slot is None else slots.pool.token
        return replace(self, batch=batch, pool=token, slot=slot)

    def resolved(self) -> _Chunk:
        """This chunk as the worker's batch was (`sent`'s inverse): its pooled tensors over
        the slot, which is freed once they are all gone, and tensors again for arrays."""
        if self.batch is None:
            return self
        arrays = {} if self.pool is None or self.slot is None else BatchPool.find(
            self.pool).arrays(self.slot, release=True)
        batch = {key: value.over(arrays[key]) if isinstance(value, _InSlot)
                 else torch.from_numpy(value) if isinstance(value, np.ndarray)
                 else value for key, value in self.batch.items()}
        return replace(self, batch=batch, pool=None, slot=None)

    def pin_memory(self) -> _Chunk:
        """This chunk with its batch's tensors in pinned memory: what the DataLoader's pinning
        thread calls (it passes other objects through untouched)."""
        chunk = self.resolved()
        return replace(chunk, batch=None if chunk.batch is None else pin_batch(chunk.batch))


def pin_batch(batch: Batch) -> Batch:
    """`batch` with every tensor copied to pinned (page-locked) memory (needs CUDA)."""
    return {key: value.pin_memory() if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


def _emit(src: Iterable[Batch], worker: int, cursor: Cursor, stats: LoaderStats,
          slots: BatchSlots | None) -> Iterator[_Chunk]:
    """The chunks of one epoch; a worker's as it sends them (`_Chunk.sent`)."""
    in_worker = get_worker_info() is not None
    for batch in src:
        chunk = _Chunk(batch, worker, cursor.position, stats.take())
        yield chunk.sent(slots) if in_worker else chunk
    if in_worker and slots is not None:
        slots.drop()
    yield _Chunk(None, worker, cursor.position, stats.take())


def _unchanged(item: _Chunk) -> _Chunk:
    """DataLoader collate_fn that passes a worker's chunk through (picklable, unlike a lambda)."""
    return item


@dataclass
class _EpochStream(IterableDataset):
    """The epochs of one rank; each DataLoader worker (or the main process) iterates a copy.

    Which epoch, and the raw samples each worker consumed earlier in it, are read from
    `position` when an iteration starts: a tensor in shared memory that `ShardLoader` writes
    before each ``iter()``, so persistent workers start every epoch where the loader says."""

    shards: ShardSet
    batch_size: int
    tokenizer: TokenizerFn
    max_text_len: int
    seed: int
    rank: int
    world_size: int
    shuffle_shards: bool
    shuffle_buffer: int
    position: torch.Tensor  # (1 + workers,) int64: the epoch, then each worker's consumed
    pool: BatchPool | None  # the batches' reused buffers (`_batch_pool`)

    def stages(self, epoch: int, worker: int, num_workers: int, stats: LoaderStats,
               cursor: Cursor) -> list[Any]:
        """The pipeline, in order; None entries are stages switched off."""
        shard_rng = random.Random(f"shards/{self.seed}/{epoch}")
        expected = self.shards.expected
        slots = None if expected is None else BatchSlots(
            slot_layout(expected, self.batch_size), self.pool, worker)
        sample_rng = random.Random(f"samples/{self.seed}/{epoch}/{self.rank}/{worker}")
        return [list(self.shards.urls),
                partial(stage.shuffle_shards, rng=shard_rng) if self.shuffle_shards else None,
                partial(stage.every_nth, start=self.rank, step=self.world_size),  # by rank
                partial(stage.every_nth, start=worker, step=num_workers),  # by worker
                partial(stage.tar_samples, stats=stats, sample_counts=self.shards.sample_counts,
                        streamed=self.shards.streamed, expected=self.shards.expected),
                (wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=sample_rng)
                 if self.shuffle_buffer > 0 else None),
                partial(stage.skip_consumed, cursor=cursor),
                partial(stage.decode_samples, stats=stats, expected=self.shards.expected,
                        slots=slots),
                partial(stage.to_tensors, tokenizer=self.tokenizer, max_text_len=self.max_text_len),
                partial(stage.batch_samples, batch_size=self.batch_size, slots=slots),
                partial(_emit, worker=worker, cursor=cursor, stats=stats, slots=slots)]

    def __iter__(self) -> Iterator[_Chunk]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch, skip = int(self.position[0]), int(self.position[1 + worker])
        cursor = Cursor(skip=skip)
        stages = self.stages(epoch, worker, num_workers, LoaderStats(), cursor)
        return iter(wds.DataPipeline([step for step in stages if step is not None]))


class ShardLoader:
    """Iterable of batches over shards; each ``iter()`` runs the rest of the current epoch.

    After an epoch ends the epoch counter advances (reshuffling shards and samples), so a
    trainer calls ``iter()`` again for the next one; once `epochs` epochs are done (None:
    never) ``iter()`` yields nothing. The position is advanced when a batch is handed out, so
    a checkpoint taken after training on it records it as consumed.

    Resume: `state_dict` holds the epoch, the batches yielded in it and, per worker, the raw
    samples taken from the shuffle buffer. A loader built with the same arguments that loads
    it skips those samples before decoding them. With ``num_workers=0`` (or 1) the next batch
    is exactly the one an uninterrupted run would have produced. With more workers each
    worker reads its own shards and resumes exactly where it stopped (no sample repeated or
    lost), but the order of batches depends on the worker count and the DataLoader's
    round-robin over workers starts afresh, so the interleaving after a resume may differ.
    The state also holds what the tar stage found this epoch (`LoaderStats.findings`), so the
    shards a resumed epoch reads again are not counted corrupt twice.

    The workers are started once and kept across epochs (``persistent_workers``): each
    ``iter()`` writes the epoch and every worker's resume position into a shared-memory tensor
    that the workers read as they start the epoch, and the DataLoader drops what the workers
    had prefetched for an iteration left early. Starting them anew every epoch cost about 40
    ms of CPU per worker (fork, copied pages, exit; `bench/loader.py`), now paid once per
    loader; they exit when the last of `epochs` ends or the loader is dropped. The
    DataLoader's base seed comes from a generator of the loader's own, so the trainer's torch
    random stream is not drawn on at each start (nothing in the stages uses it). Prefetch
    stays at the DataLoader's default (2 chunks per worker): a worker decodes some tens of
    samples/s per core while a GPU trains on thousands, so the queue runs empty whatever its
    depth."""

    def __init__(self, shards: ShardSet, batch_size: int, *, tokenizer: TokenizerFn,
                 max_text_len: int, seed: int, shuffle_shards: bool, shuffle_buffer: int,
                 num_workers: int, epochs: int | None, rank: int, world_size: int,
                 pin_memory: bool = False) -> None:
        self.shards = shards
        self.seed = seed
        self.num_workers = num_workers
        self.epochs = epochs
        self.rank = rank
        self.world_size = world_size
        self.pin_memory = pin_memory
        self.stats = LoaderStats()
        self.epoch = 0
        self.batches = 0  # yielded in the current epoch
        self.consumed = self._no_progress()
        self.found: set[tuple[str, str]] = set()  # findings counted in the current epoch
        self._position = torch.zeros(1 + len(self.consumed), dtype=torch.int64)
        if num_workers > 0:
            self._position.share_memory_()
        self._stream = _EpochStream(shards, batch_size, tokenizer, max_text_len, seed, rank,
                                    world_size, shuffle_shards, shuffle_buffer, self._position,
                                    _batch_pool(shards, batch_size, num_workers))
        self._workers: DataLoader | None = None  # started by the first iter(), then kept

    def _no_progress(self) -> list[int]:
        return [0] * max(1, self.num_workers)

    def __iter__(self) -> Iterator[Batch]:
        if self.epochs is not None and self.epoch >= self.epochs:
            return
        fresh = self.batches == 0 and not any(self.consumed)
        self._position.copy_(torch.tensor([self.epoch, *self.consumed]))
        chunks: Iterable[_Chunk] = self._stream
        if self.num_workers > 0:
            if self._workers is None:
                # The DataLoader's own thread pins the workers' batches while this one trains.
                self._workers = DataLoader(
                    self._stream, batch_size=None, num_workers=self.num_workers,
                    collate_fn=_unchanged, persistent_workers=True, pin_memory=self.pin_memory,
                    generator=torch.Generator().manual_seed(self.seed))
            chunks = self._workers
        for chunk in chunks:
            chunk = chunk.resolved()
            self._count(chunk.stats)
            self.consumed[chunk.worker] = chunk.position
            if chunk.batch is None:
                continue
            self.batches += 1
            self.stats.batches += 1
            self.stats.samples += len(chunk.batch["__key__"])
            yield (pin_batch(chunk.batch) if self.pin_memory and self.num_workers == 0
                   else chunk.batch)
        if fresh and self.batches == 0:
            raise PipelineError(f"epoch {self.epoch} of rank {self.rank} yielded no valid sample "
                                f"from {len(self.shards.urls)} shard(s) "
                                f"({self.stats.skipped_samples} skipped, "
                                f"{self.stats.corrupt_shards} corrupt shards); last errors: "
                                + " | ".join(self.stats.errors[-3:]))
        self.epoch += 1
        self.batches = 0
        self.consumed = self._no_progress()
        self.found = set()
        if self.epochs is not None and self.epoch >= self.epochs:
            self._workers = None  # the last epoch is done: its workers exit

    def _count(self, news: LoaderStats) -> None:
        """Add a worker's news to `stats`, each tar-stage finding once per epoch."""
        for finding in news.findings:
            if finding not in self.found:
                self.found.add(finding)
                counter = finding[0]
                setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        news.findings = []
        self.stats.add(news)

    def state_dict(self) -> dict[str, Any]:
        """The position in plain ints, and this epoch's findings, for the trainer's checkpoint
        JSON."""
        return {"epoch": self.epoch, "batches": self.batches, "consumed": list(self.consumed),
                "found": sorted([counter, what] for counter, what in self.found)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict` of a loader built with the same arguments."""
        try:
            epoch, batches = int(state["epoch"]), int(state["batches"])
            consumed = [int(value) for value in state["consumed"]]
            # Written before findings were kept: none are known, as then.
            found = {(str(counter), str(what)) for counter, what in state.get("found", [])}
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(f"not a ShardLoader state (need epoch, batches, consumed, "
                              f"found): {state!r}"[:500]) from err
        unknown = {counter for counter, _ in found} - set(_FINDING_COUNTERS)
        if unknown:
            raise ConfigError(f"not a ShardLoader state: findings of unknown counters "
                              f"{', '.join(sorted(unknown))}")
        if min(epoch, batches, *consumed) < 0:
            raise ConfigError(f"not a ShardLoader state: epoch, batches and consumed must be "
                              f">= 0, got {epoch}, {batches}, {consumed}"[:300])
        urls = self.shards.urls
        if all(url in self.shards.sample_counts for url in urls):
            total = sum(self.shards.sample_counts[url] for url in urls)
            if sum(consumed) > total:
                raise ConfigError(f"the loader state says {sum(consumed)} samples of this "
                                  f"epoch were read, but the shards hold {total}")
        if len(consumed) != len(self.consumed):
            raise ConfigError(f"the loader state was saved with {len(consumed)} worker "
                              f"position(s), this loader has {len(self.consumed)}; resume with "
                              f"num_workers={len(consumed)} (0 and 1 are the same)")
        self.epoch, self.batches, self.consumed, self.found = epoch, batches, consumed, found


def _batch_pool(shards: ShardSet, batch_size: int, workers: int) -> BatchPool | None:
    """Reused buffers for the batches when their sizes are known (a manifest) and workers, if
    any, are forked (they inherit the pool's memory; spawned ones could not)."""
    if shards.expected is None or (workers > 0 and mp.get_start_method() != "fork"):
        return None
    return BatchPool(slot_layout(shards.expected, batch_size), workers)


def build_shard_loader(urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                       batch_size: int, *, tokenizer: TokenizerFn = byte_tokenizer,
                       max_text_len: int = 128, seed: int = 0, shuffle_shards: bool = True,
                       shuffle_buffer: int = 1000, num_workers: int = 0,
                       epochs: int | None = None, rank: int | None = None,
                       world_size: int | None = None, split: Split | None = None,
                       pin_memory: bool = False) -> ShardLoader:
    """A `ShardLoader` over `urls` (see `resolve_shards` for what they may be, and for `split`:
    "train" or "eval" keeps that split of a prepared folder, None both).

    `shuffle_buffer` raw samples (0: no sample shuffle) are held per worker before the first
    one leaves; `epochs` caps the epochs (None: endless); `rank`/`world_size` default to
    torch.distributed, then the RANK/WORLD_SIZE environment. Every rank needs at least one
    shard; ranks get whole shards, so their sample counts differ unless the shards are equal.
    `pin_memory` puts the batches in pinned memory (with workers, on the DataLoader's pinning
    thread), so that a ``non_blocking`` copy to a CUDA device is asynchronous: pass True when
    the batches go to a CUDA device, never on a machine without CUDA."""
    for name, value, low in (("batch_size", batch_size, 1), ("max_text_len", max_text_len, 1),
                             ("shuffle_buffer", shuffle_buffer, 0),
                             ("num_workers", num_workers, 0)):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"epochs must be >= 1 or None (endless), got {epochs}")
    if not isinstance(pin_memory, bool):
        raise ConfigError(f"pin_memory must be True or False, got {pin_memory!r}")
    if pin_memory and not torch.cuda.is_available():
        raise ConfigError("pin_memory=True needs a CUDA device (pinned memory speeds up copies "
                          "to one); pass pin_memory=False when training on the CPU")
    rank, world_size = stage.resolve_rank(rank, world_size)
    shards = resolve_shards(urls, split)
    if len(shards.urls) < world_size:
        raise ConfigError(f"{len(shards.urls)} shard(s) cannot feed {world_size} ranks (each "
                          f"needs at least one); prepare with a smaller --samples-per-shard")
    return ShardLoader(shards, batch_size, tokenizer=tokenizer, max_text_len=max_text_len,
                       seed=seed, shuffle_shards=shuffle_shards, shuffle_buffer=shuffle_buffer,
                       num_workers=num_workers, epochs=epochs, rank=rank, world_size=world_size,
                       pin_memory=pin_memory)
