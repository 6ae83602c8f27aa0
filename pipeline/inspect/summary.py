"""The default `omni inspect` view: shards, samples, footage, transcript coverage and audio
share, in all and per split (train/eval, `pipeline.shards.split`). It reads the ``json`` and ``txt``
of every sample but seeks past the media members, so it costs a small fraction of a full
read; the first few samples are decoded for member dtypes and shapes."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline.inspect.reader import (
    META_MEMBERS,
    ProgressFn,
    ShardReadError,
    iter_all,
    iter_raw_samples,
    parse_meta,
)
from pipeline.inspect.target import Target
from pipeline.shards.decode import CorruptMemberError, decode_sample
from pipeline.shards.schema import SCHEMA_MEMBERS
from pipeline.shards.split import SPLITS, TRAIN, Split

PROBE_SAMPLES = 3  # samples decoded by `summarize` for member dtypes and shapes


@dataclass
class ShardEntry:
    """One shard as found on disk, next to what was recorded for it."""

    path: str
    bytes: int | None  # None: the file is missing
    samples: int | None  # counted; None when missing
    expected_samples: int | None = None
    expected_bytes: int | None = None
    error: str | None = None  # why it could not be read to its end
    split: Split = TRAIN


@dataclass
class SplitCount:
    """One split's shards as found: how many, their samples, and the videos among them."""

    shards: int = 0
    samples: int = 0
    videos: int = 0


@dataclass(frozen=True)
class MemberInfo:
    """A member as decoded from the first samples: `kind` is its Python type."""

    name: str
    kind: str  # "array", "str", "object" or "unread" (unknown or unsafe type)
    dtype: str | None
    shape: list[int] | None
    mean_bytes: int  # encoded size in the tar


@dataclass(frozen=True)
class TranscriptCoverage:
    """Samples of one `transcript_source` and how many of them have non-empty text."""

    source: str
    samples: int
    with_text: int


@dataclass
class Summary:
    """Everything the default `omni inspect` shows."""

    target: Target
    shards: list[ShardEntry]
    samples: int  # samples found in the shards
    videos: int  # distinct videos among them
    clip_seconds: float  # sum of window durations: windows overlap, so this is not footage
    span_seconds: float  # per video, first window start to last window end, summed
    with_text: int
    with_audio: int
    unreadable_meta: int  # samples whose json or txt is missing or broken (see verify)
    transcripts: list[TranscriptCoverage]
    members: list[MemberInfo]
    splits: dict[Split, SplitCount] = field(default_factory=dict)

    @property
    def expected_samples(self) -> int | None:
        counts = [entry.expected_samples for entry in self.shards]
        return None if any(count is None for count in counts) else sum(counts)  # type: ignore

    @property
    def shard_bytes(self) -> int:
        return sum(entry.bytes or 0 for entry in self.shards)

    @property
    def footage_seconds(self) -> float | None:
        """Decoded footage of the prepared videos, as prepare recorded it; None without."""
        totals = self.target.totals
        return None if totals is None else float(totals.get("footage_seconds", 0.0))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(expected_samples=self.expected_samples, shard_bytes=self.shard_bytes,
                    footage_seconds=self.footage_seconds,
                    text_fraction=_fraction(self.with_text, self.samples),
                    audio_fraction=_fraction(self.with_audio, self.samples))
        return data


def _fraction(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


def summarize(target: Target, progress: ProgressFn | None = None) -> Summary:
    """Count and describe the samples of `target` (json and txt of each; see module doc)."""
    entries: list[ShardEntry] = []
    samples = with_text = with_audio = unreadable = 0
    clip_seconds = 0.0
    spans: dict[str, tuple[float, float]] = {}
    coverage: dict[str, list[int]] = {}
    splits = {split: SplitCount() for split in SPLITS}
    split_videos: dict[Split, set[str]] = {split: set() for split in SPLITS}
    for path in target.shards:
        recorded = target.expected.get(path)
        entry = ShardEntry(path, None, None, split=target.split_of(path))
        if recorded is not None:
            entry.expected_samples, entry.expected_bytes = recorded.samples, recorded.bytes
        entries.append(entry)
        splits[entry.split].shards += 1
        if not os.path.isfile(path):
            entry.error = "missing"
            continue
        entry.bytes, entry.samples = os.path.getsize(path), 0
        position = 0
        try:
            for raw in iter_raw_samples(path, META_MEMBERS.__contains__):
                entry.samples += 1
                if progress is not None:
                    progress(1, raw.end - position)
                position = raw.end
                meta, text = parse_meta(raw)
                if meta is None or text is None:
                    unreadable += 1
                    continue
                clip_seconds += meta.end - meta.start
                first, last = spans.get(meta.video_id, (meta.start, meta.end))
                spans[meta.video_id] = (min(first, meta.start), max(last, meta.end))
                split_videos[entry.split].add(meta.video_id)
                counts = coverage.setdefault(meta.transcript_source, [0, 0])
                counts[0] += 1
                counts[1] += bool(text.strip())
                with_text += bool(text.strip())
                with_audio += meta.has_audio
        except ShardReadError as err:
            entry.error = err.reason
        if progress is not None:
            progress(0, entry.bytes - position)
        samples += entry.samples
        splits[entry.split].samples += entry.samples
    for split, ids in split_videos.items():
        splits[split].videos = len(ids)
    return Summary(target=target, shards=entries, samples=samples, videos=len(spans),
                   clip_seconds=round(clip_seconds, 3),
                   span_seconds=round(sum(end - start for start, end in spans.values()), 3),
                   with_text=with_text, with_audio=with_audio, unreadable_meta=unreadable,
                   transcripts=[TranscriptCoverage(source, counts[0], counts[1])
                                for source, counts in sorted(coverage.items())],
                   members=_probe_members(target), splits=splits)


def _probe_members(target: Target) -> list[MemberInfo]:
    """Member dtypes and shapes from the first PROBE_SAMPLES samples that decode."""
    found: dict[str, list[Any]] = {}  # name -> [kind, dtype, shape, total bytes, count]
    decoded_samples = 0
    sample_format = target.sample_format
    for raw in iter_all(target, lambda name: True, sample_format):
        if raw.too_large:
            continue
        try:
            sample, dropped = decode_sample(raw.for_decoding(), sample_format)
        except CorruptMemberError:
            continue
        for name in dropped:
            found.setdefault(name, ["unread", None, None, 0, 0])
        for name, value in sample.items():
            kind, dtype, shape = "object", None, None
            if isinstance(value, np.ndarray):
                kind, dtype, shape = "array", str(value.dtype), list(value.shape)
            elif isinstance(value, str):
                kind = "str"
            found.setdefault(name, [kind, dtype, shape, 0, 0])
        for name in {*sample, *dropped}:
            found[name][3] += raw.sizes[name]
            found[name][4] += 1
        decoded_samples += 1
        if decoded_samples == PROBE_SAMPLES:
            break
    order = {name: index for index, name in enumerate(SCHEMA_MEMBERS)}
    return [MemberInfo(name, kind, dtype, shape, round(total / count))
            for name, (kind, dtype, shape, total, count)
            in sorted(found.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))]
