"""Streaming, resumable loader over shard schema v1: shards in, model-ready batches out.

One epoch is a visible list of webdataset stages (`_EpochStream.stages`):

    shard list -> shard shuffle (seed, epoch) -> split by rank -> split by worker
    -> tar to raw samples (a broken shard is counted, the run goes on; each member's declared
       size checked before it is read)
    -> sample shuffle buffer (seed, epoch, rank, worker) -> skip what was consumed
    -> safe decode (`decode.decode_samples_together`: a batch's samples member by member,
       each straight into its rows of the batch, `batches.BatchSlots`, reused buffers of a
       `batch_pool.BatchPool`)
       + `validate.validate_sample`
    -> tensors -> batches (`batches.collate`)

Every random choice comes from a generator seeded with (seed, epoch[, rank, worker]), so the
same seed gives the same order. Errors never stop the stream and never sleep (webdataset's
`warn_and_continue` sleeps 0.5 s per error): a broken shard, a corrupt member or an incomplete
sample is dropped and counted in `ShardLoader.stats`, with the last few reasons.

Shards are read as plain tars: a local shard as a file, only a URL the caller named
(`ShardSet.streamed`) through webdataset's gopen. A compressed "tar" is a broken shard, never
decompressed, and no member is read whose declared size exceeds `decode.member_cap`, so a
small hostile shard cannot make a worker read or decode gigabytes.

Batch (B samples, T frames, M mel bins, L the longest text in the batch, at least 1), in the
stored dtypes: ``video`` uint8, of mp4 clips their I420 frames (B, T, 3H/2, W) (per frame
Y's H rows, then U's and V's H/2 x W/2 values back to back), of npy clips RGB (B, 3, T, H, W)
channels first; ``image`` (B, S, S, 3) uint8 pixels, channels last as decoded; ``audio``
(B, M, T_mel) float16 log-mel as stored; ``text`` (B, L) long, right-padded with 0; ``has_text`` and
``has_audio`` (B,) bool (the row has a transcript / a sound stream); ``__key__`` list[str];
``meta`` list[dict] (the json member).
A quarter (pixels; I420 an eighth) and half (mel) of float32's bytes cross from the workers
and to the device; the consumer maps them to model units there
(`pipeline.normalize.to_model_units`, which also converts I420 to RGB and puts the image's
channels first there). With
``pin_memory`` the batches' tensors are in pinned memory, so a ``non_blocking`` copy to a CUDA
device runs asynchronously."""

from __future__ import annotations

import itertools
import os
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import IO, Any

import numpy as np
import torch
import webdataset as wds

from pipeline.errors import ConfigError, PipelineError
from pipeline.loader.batches import Batch, BatchSlots, collate
from pipeline.modalities import MAX_TEXT_LEN
from pipeline.normalize import STORED_DTYPES
from pipeline.shards.decode import (
    CorruptMemberError,
    decode_sample,
    decode_samples_together,
    oversized_member,
)
from pipeline.shards.schema import (
    CLIP_MEMBERS,
    CLIP_PREFIX,
    MEMBER_IMAGE,
    MEMBER_JSON,
    MEMBER_MEL,
    MEMBER_TEXT,
    SCHEMA_MEMBERS,
    expected_from_meta,
)
from pipeline.shards.shardset import split_member_name
from pipeline.shards.tar_reader import TarReader
from pipeline.shards.validate import validate_sample
from pipeline.tokenizer import TokenizerFn, byte_tokenizer

MAX_ERRORS = 20  # reasons kept in LoaderStats.errors
# Members webdataset skips entirely ("__key__.txt" and the like): not part of any sample.
_META_MEMBER = re.compile(r"__[^/]*__($|/)")


@dataclass
class LoaderStats:
    """What the loader has delivered and dropped since it was built (all epochs, all workers)."""

    samples: int = 0  # samples delivered in batches
    batches: int = 0
    skipped_samples: int = 0  # corrupt, incomplete or inconsistent samples
    unsafe_members: int = 0  # members of unknown or unsafe types, dropped undecoded
    corrupt_shards: int = 0  # shards that failed to open or read to the end, or came up short
    surplus_shards: int = 0  # shards with more samples than their manifest entry (all used)
    errors: list[str] = field(default_factory=list)  # the last MAX_ERRORS reasons, oldest first
    # What the tar stage found, as (counter, what) pairs that `ShardLoader` counts once per
    # epoch: a resumed epoch reads its shards again from the start, and would count twice.
    findings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        """Samples lost: read from a shard but never delivered (`skipped_samples`)."""
        return self.skipped_samples

    def note(self, reason: str) -> None:
        self.errors.append(reason)
        del self.errors[:-MAX_ERRORS]

    def find(self, counter: str, what: str, reason: str) -> None:
        """Record a finding of the tar stage (`counter` one of the int fields, `what` naming it
        within the epoch, e.g. the shard's URL) with its reason."""
        self.findings.append((counter, what))
        self.note(reason)

    def add(self, other: LoaderStats) -> None:
        for item in fields(self):
            if item.name not in ("errors", "findings"):
                setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))
        for reason in other.errors:
            self.note(reason)
        self.findings += other.findings

    def take(self) -> LoaderStats:
        """A copy of the counters, which are then reset: how a worker reports its news."""
        news = replace(self, errors=list(self.errors), findings=list(self.findings))
        for item in fields(self):
            setattr(self, item.name, [] if item.name in ("errors", "findings") else 0)
        return news


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): from the arguments, else torch.distributed, else RANK/WORLD_SIZE."""
    if (rank is None) != (world_size is None):
        raise ConfigError("pass both rank and world_size, or neither (to detect them)")
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        else:
            rank, world_size = 0, 1
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    return rank, world_size


@dataclass
class Cursor:
    """Raw samples taken from the shuffle buffer this epoch, and how many of them to drop."""

    skip: int
    position: int = 0


def shuffle_shards(src: Iterable[str], rng: random.Random) -> Iterator[str]:
    """All shard URLs in an order drawn from `rng` (the same on every rank and worker)."""
    shards = list(src)
    rng.shuffle(shards)
    yield from shards


def every_nth(src: Iterable[str], start: int, step: int) -> Iterator[str]:
    """Every `step`-th shard from the `start`-th: ranks (then each rank's workers) read
    disjoint shards."""
    for index, url in enumerate(src):
        if index % step == start:
            yield url


def tar_samples(src: Iterable[str], stats: LoaderStats, sample_counts: dict[str, int],
                streamed: frozenset[str] = frozenset(),
                expected: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples (``__key__``, ``__url__`` and member bytes) from each shard in turn.

    A shard that cannot be opened or read to its end counts as corrupt: the samples before
    the damage are kept, the one being read is dropped (it may be cut short), and the stream
    goes on with the next shard. A shard with fewer samples than its manifest entry (a tar cut
    at a member boundary reads as complete) counts as corrupt too; one with more counts as
    surplus, and its samples are used: each is validated on its own, and which of them would
    be the extra ones is unknowable. Members outside the schema are recorded by name with the
    value None, their bytes skipped unread (`decode_samples` drops them by name). Two members
    of one sample with the same name, or a member declaring more bytes than
    `decode.member_cap` of `expected` (skipped unread), mark the sample for `decode_samples`
    to drop."""
    for url in src:
        current: dict[str, Any] | None = None
        count = 0
        try:
            with _open_shard(url, streamed) as stream:
                tar = TarReader(stream)
                for name, size in tar.members():
                    if _META_MEMBER.match(name):
                        continue
                    prefix, suffix = split_member_name(name)
                    if prefix is None:
                        stats.find("unsafe_members", f"{url}/{name}",
                                   f"{url}: member {name!r} has no type; dropped")
                        continue
                    if current is not None and prefix != current["__key__"]:
                        count += 1
                        yield current
                        current = None
                    if current is None:
                        current = {"__key__": prefix, "__url__": url}
                    suffix = suffix.lower()
                    if suffix in current:
                        current.setdefault("__error__", f"member {suffix!r} appears twice")
                    current[suffix] = _member_bytes(tar, size, suffix, expected, current)
        except Exception as err:  # the tar reader's TarFormatError, or what the transport raises
            stats.find("corrupt_shards", url,
                       f"{url}: unreadable shard (shards are plain, uncompressed tars), "
                       f"skipping the rest of it: {type(err).__name__}: {err}")
            if current is not None:
                stats.findings.append(("skipped_samples", f"{url}/{current['__key__']}"))
            continue
        if current is not None:
            count += 1
            yield current
        wanted = sample_counts.get(url)
        if wanted is not None and count < wanted:
            stats.find("corrupt_shards", url, f"{url}: {count} samples, its manifest entry "
                       f"says {wanted} (truncated?)")
        elif wanted is not None and count > wanted:
            stats.find("surplus_shards", url,
                       f"{url}: {count} samples, its manifest entry says {wanted} (the shard "
                       f"was replaced or appended to after prepare); its samples are used")


def _open_shard(url: str, streamed: frozenset[str]) -> IO[bytes]:
    """A shard's bytes: a URL the caller named through gopen, anything else as a local file
    (never gopen, which would run a ``pipe:`` name through a shell)."""
    return wds.gopen(url) if url in streamed else open(url, "rb")


def _member_bytes(tar: TarReader, size: int, name: str, expected: dict[str, Any] | None,
                  sample: dict[str, Any]) -> bytes | None:
    """The bytes of the member `tar` is at, schema member `name` declaring `size` bytes,
    within its cap; None, unread, for any other member (and an over-cap one marks `sample`
    to be dropped)."""
    if name not in SCHEMA_MEMBERS:
        return None
    reason = oversized_member(name, size, expected)
    if reason is not None:
        sample.setdefault("__error__", reason)
        return None
    return tar.read()


def skip_consumed(src: Iterable[dict[str, Any]], cursor: Cursor) -> Iterator[dict[str, Any]]:
    """Count raw samples and drop the first `cursor.skip`: resuming costs reads, not decodes."""
    for sample in src:
        cursor.position += 1
        if cursor.position > cursor.skip:
            yield sample


def decode_samples(src: Iterable[dict[str, Any]], stats: LoaderStats,
                   expected: dict[str, Any] | None,
                   slots: BatchSlots | None = None) -> Iterator[dict[str, Any]]:
    """Decoded, validated samples; unsafe members and broken samples are dropped and counted.

    With `slots` (and `expected`) each sample is decoded into its rows of the batch
    (`BatchSlots`), and the raw samples are taken as many at a time as the batch still has
    rows, then decoded together, member by member (`decode.decode_samples_together`: every
    clip, then every picture, ..., which keeps each decoder in the caches): no raw sample is
    taken beyond the batch, so the cursor still counts exactly what the batches so far
    consumed. A sample dropped among them leaves the later ones in rows one too far on; those
    are decoded again, one by one, into their right rows (only broken data pays for that).

    Without `expected` (no manifest) the first sample whose json parses sets it, so a batch
    never mixes sizes."""
    if slots is None or expected is None:
        yield from _one_by_one(src, stats, expected, slots)
        return
    raws = iter(src)
    while group := list(itertools.islice(raws, slots.rows_left())):
        rows = slots.next_rows([_clip_member(raw) for raw in group])
        decoded = decode_samples_together(
            [{} if "__error__" in raw else raw for raw in group], expected, rows)
        for index, (raw, result) in enumerate(zip(group, decoded, strict=True)):
            sample = _accepted(raw, result, stats, expected)
            if sample is None:
                yield from _one_by_one(group[index + 1:], stats, expected, slots)
                break
            slots.keep()
            yield sample


def _one_by_one(raws: Iterable[dict[str, Any]], stats: LoaderStats,
                expected: dict[str, Any] | None,
                slots: BatchSlots | None) -> Iterator[dict[str, Any]]:
    """`decode_samples` a sample at a time, each into its rows when `slots` are given."""
    for raw in raws:
        result: tuple[dict[str, Any], list[str]] | CorruptMemberError = ({}, [])
        if "__error__" not in raw:
            try:
                result = decode_sample(raw, expected, None if slots is None
                                       else slots.next_rows([_clip_member(raw)])[0])
            except CorruptMemberError as err:
                result = err
        if (expected is None and not isinstance(result, CorruptMemberError)
                and isinstance(result[0].get(MEMBER_JSON), dict)):
            try:
                expected = expected_from_meta(result[0][MEMBER_JSON])
            except ValueError:
                pass  # validate_sample reports the broken json
        sample = _accepted(raw, result, stats, expected)
        if sample is not None:
            if slots is not None:
                slots.keep()
            yield sample


def _clip_member(raw: dict[str, Any]) -> str | None:
    return next((name for name in CLIP_MEMBERS if name in raw), None)


def _accepted(raw: dict[str, Any],
              result: tuple[dict[str, Any], list[str]] | CorruptMemberError,
              stats: LoaderStats, expected: dict[str, Any] | None) -> dict[str, Any] | None:
    """The decoded sample of `raw` (`result`: `decode_sample`'s, or what it raised) if it
    passes `validate_sample`; else None, its reason counted in `stats`. A raw sample the tar
    stage marked (``__error__``) is dropped for that reason, undecoded."""
    where = f"{raw.get('__key__')} ({raw.get('__url__')})"
    if "__error__" in raw:
        result = CorruptMemberError(raw["__error__"])
    if isinstance(result, CorruptMemberError):
        stats.skipped_samples += 1
        stats.note(f"{where}: {result}")
        return None
    sample, dropped = result
    if dropped:
        stats.unsafe_members += len(dropped)
        stats.note(f"{where}: dropped members {', '.join(dropped)} without decoding them")
    problems = validate_sample(sample, expected)
    if problems:
        stats.skipped_samples += 1
        stats.note(f"{where}: " + "; ".join(problems))
        return None
    return sample


def to_tensors(src: Iterable[dict[str, Any]], tokenizer: TokenizerFn,
               max_text_len: int) -> Iterator[dict[str, Any]]:
    for sample in src:
        clip = next(value for name, value in sample.items() if name.startswith(CLIP_PREFIX))
        yield sample_tensors(clip, sample[MEMBER_IMAGE], sample[MEMBER_MEL], sample[MEMBER_TEXT],
                             tokenizer=tokenizer, max_text_len=max_text_len,
                             key=sample["__key__"], meta=sample[MEMBER_JSON])


def sample_tensors(frames: np.ndarray | None, image: np.ndarray | None, mel: np.ndarray | None,
                   text: str | None, *, tokenizer: TokenizerFn = byte_tokenizer,
                   max_text_len: int = MAX_TEXT_LEN, key: str = "",
                   meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """One sample as `collate` takes it: what the loader yields, and what `omni generate`
    builds from its input files, so the model sees both in the same units.

    The arrays keep their stored dtypes (`pipeline.normalize.to_model_units` maps them on the
    device): `frames` (T, H, W, 3) RGB or (T, 3H/2, W) I420 (an mp4 clip, `decode.i420_shape`)
    and `image` (S, S, 3) uint8, `mel` (M, T_mel) float16
    log-mel; another dtype is refused (a float32 tensor would pass for model units). `text` is
    tokenized. A modality given as None is left out (generating from a picture has only
    `image`), and `collate` leaves it out of the batch."""
    tensors: dict[str, Any] = {}
    for modality, array in (("video", frames), ("image", image), ("audio", mel)):
        if array is None:
            continue
        value = torch.from_numpy(array)  # (T, H, W, 3) | (T, 3H/2, W) | (S, S, 3) uint8, ...
        if value.dtype != STORED_DTYPES[modality]:
            raise PipelineError(f"{modality} must be stored as {STORED_DTYPES[modality]}, "
                                f"got {value.dtype}")
        tensors[modality] = value
    if text is not None:
        ids = tokenizer(text, max_text_len)  # (L,)
        if ids.dim() != 1:
            raise PipelineError(f"the tokenizer returned shape {tuple(ids.shape)}; a "
                                f"TokenizerFn must return a 1-D tensor of ids")
        tensors["text"] = ids.long()
    tensors["__key__"] = key
    tensors["meta"] = {} if meta is None else meta
    return tensors


def batch_samples(src: Iterable[dict[str, Any]], batch_size: int,
                  slots: BatchSlots | None = None) -> Iterator[Batch]:
    """Collated batches of `batch_size` samples, the last one possibly smaller; with `slots`,
    into its buffers: their video is the slots the clips were decoded into.

    Unlike `webdataset.batched`, a full batch leaves before the next sample is pulled, so the
    cursor's position at that moment counts exactly the samples this batch and the ones
    before it consumed: what resuming needs (and the slots are not yet handed on)."""
    pending: list[dict[str, Any]] = []
    for sample in src:
        pending.append(sample)
        if len(pending) == batch_size:
            yield collate(pending, None if slots is None else slots.batch_buffers(len(pending)))
            pending = []
    if pending:
        yield collate(pending, None if slots is None else slots.batch_buffers(len(pending)))
