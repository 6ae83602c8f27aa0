"""Look inside prepared shards: what they hold, whether every sample is sound, and pictures.

What `omni inspect` runs, as a library (it returns dataclasses and never prints):

- `open_target`: a prepared folder (its ``manifest.json``; without one, the shards on disk and
  the stats files of the finished units), one or more ``.tar`` shards, or brace patterns.
- `summarize`: shards, samples, footage, transcript coverage and audio share, in all and per
  split (train/eval, `pipeline.split`). It reads the ``json`` and ``txt`` of every sample but
  seeks past the media members, so it costs a small fraction of a full read; the first few
  samples are decoded for member dtypes and shapes.
- `verify`: every member of every sample decoded with `schema.decode_sample` (nothing is ever
  unpickled; unknown or unsafe members are problems, never read) and checked with
  `schema.validate_sample` against the prepare config; sample counts and sizes against the
  manifest, shard by shard, per split and in total; keys duplicated anywhere in the set (both
  splits together: a video is in one split only); unreadable and truncated tars. Shards can be
  verified in parallel processes.
- `list_samples` / `export_samples`: the first samples as text, or as files a person can open
  (frame PNG, clip GIF and contact sheet, mel PNG, transcript).

Samples are grouped the way webdataset groups them (consecutive members sharing the name up to
the first dot of the base name), so inspect sees exactly what the loader sees. It reads them
the way the loader does too: as plain local tars, each member's declared size checked against
`schema.member_cap` before it is read, media decoded by the same size-checking decoder, and of
a prepared folder only the shards inside it (`pipeline.shards.listed_shard_path`).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config import PrepareConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.manifest import Manifest, Totals, read_manifest, split_totals
from pipeline.outdir import MANIFEST_NAME, OutputDir
from pipeline.schema import (
    CLIP_PREFIX,
    MEMBER_IMAGE,
    MEMBER_JSON,
    MEMBER_MEL,
    MEMBER_TEXT,
    SCHEMA_MEMBERS,
    CorruptMemberError,
    SampleMeta,
    decode_member,
    decode_sample,
    expected_from_config,
    expected_from_meta,
    oversized_member,
    validate_sample,
)
from pipeline.shards import listed_shard_path, shard_split
from pipeline.shardset import (
    SHARD_GLOB,
    URL_SCHEME,
    resolve_shards,
    shards_on_disk,
    split_member_name,
)
from pipeline.split import SPLITS, TRAIN, Split
from pipeline.worker import FAILED, SKIPPED

# Called with the samples and bytes read since the previous call, for progress bars.
ProgressFn = Callable[[int, int], None]

PROBE_SAMPLES = 3  # samples decoded by `summarize` for member dtypes and shapes
PROBLEM_LIMIT = 100  # problems `verify` keeps in detail; the rest are only counted
_END_OF_ARCHIVE = 1024  # a tar ends with two zero 512-byte blocks
_META_MEMBERS = frozenset({MEMBER_JSON, MEMBER_TEXT})
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")
# Viridis at 9 evenly spaced points: perceptually uniform and readable in grey, so a mel image
# needs no plotting library.
_VIRIDIS = np.array([
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
], dtype=np.float64)


class ShardReadError(PipelineError):
    """A shard that cannot be read to its end: unreadable, cut short, or not a tar.

    `reason` says what is wrong without the path, for reports that already show it.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# --------------------------------------------------------------------------- target
@dataclass(frozen=True)
class ShardExpectation:
    """What the manifest (or a unit's stats file) recorded for one shard."""

    samples: int
    bytes: int
    split: Split = TRAIN


@dataclass(frozen=True)
class VideoIssue:
    """A video that prepare did not turn into samples (failed or skipped), or a warning."""

    source: str
    status: str  # "failed", "skipped" or "warning"
    reason: str


@dataclass
class Target:
    """What PATH resolved to: the shards to read and what was recorded about them.

    `expected` maps a shard path to its recorded count, size and split; `totals` and `splits`
    (the same counts per split) are the manifest's (or, without a manifest, those of the
    finished units' stats files).
    """

    path: str
    kind: str  # "directory", "shard" or "shards"
    shards: list[str]
    manifest: str | None = None
    created: str | None = None
    config: dict[str, Any] | None = None  # PrepareConfig fields
    clip_encoding: str | None = None
    expected: dict[str, ShardExpectation] = field(default_factory=dict)
    totals: dict[str, Any] | None = None
    splits: dict[Split, dict[str, Any]] | None = None
    issues: list[VideoIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)  # shards no finished unit claims

    @property
    def sample_format(self) -> dict[str, Any] | None:
        """`expected_from_config` of the recorded config, None when there is none."""
        return None if self.config is None else expected_from_config(
            PrepareConfig.from_dict(self.config))

    def shard_bytes(self) -> int:
        """Bytes of the shards that exist now (what a full read goes through)."""
        return sum(os.path.getsize(path) for path in self.shards if os.path.isfile(path))

    def split_of(self, path: str) -> Split:
        """The split of a shard: as recorded, else as its file name says."""
        recorded = self.expected.get(path)
        return recorded.split if recorded is not None else shard_split(path)


def open_target(paths: Sequence[str | os.PathLike[str]]) -> Target:
    """Resolve `paths`: one prepared folder, or local shard files and brace patterns.

    Raises PipelineError (ConfigError) with what to do when nothing usable is found.
    """
    items = [os.fspath(path) for path in paths]
    if not items:
        raise ConfigError("pass a folder written by omni prepare, a .tar shard or a pattern")
    if len(items) == 1 and Path(items[0]).is_dir():
        return _open_directory(Path(items[0]))
    for item in items:
        if "{" in item or Path(item).exists():
            continue
        if URL_SCHEME.match(item):
            raise ConfigError(f"{item} is not a local file; omni inspect reads local shards "
                              f"(copy remote ones first)")
        raise ConfigError(f"{item} does not exist; pass a folder written by omni prepare, "
                          f"a .tar shard or a brace pattern (shard-{{000000..000009}}.tar)")
    if any(Path(item).is_dir() for item in items):
        raise ConfigError("a prepared folder is inspected on its own; pass it alone, or pass "
                          "only shard files and patterns")
    urls = list(resolve_shards(items).urls)
    for url in urls:
        if not Path(url).is_file():
            raise ConfigError(f"{url} is not a local file; omni inspect reads local shards "
                              f"(copy remote ones first)")
    single = len(urls) == 1 and len(items) == 1 and "{" not in items[0]
    target = Target(path=" ".join(items), kind="shard" if single else "shards", shards=urls)
    target.notes.append("no manifest: footage, failures and the prepare config are recorded "
                        "only in a prepared folder; pass the folder to see them")
    return target


def _open_directory(folder: Path) -> Target:
    manifest = read_manifest(folder)
    target = _from_stats(folder) if manifest is None else _from_manifest(folder, manifest)
    temporary = sorted(folder.glob(SHARD_GLOB + ".tmp"))
    if temporary:
        target.notes.append(f"{len(temporary)} shard(s) still have temporary names (.tar.tmp): "
                            f"a prepare is running or was interrupted; they are not read")
    return target


def _from_manifest(folder: Path, manifest: Manifest) -> Target:
    issues = [VideoIssue(str(item["source"]), FAILED, str(item["reason"]))
              for item in manifest.failures]
    issues += [VideoIssue(str(item["source"]), SKIPPED, str(item["reason"]))
               for item in manifest.skipped]
    issues += [VideoIssue(str(item["source"]), "warning", str(item["warning"]))
               for item in manifest.warnings]
    target = Target(
        path=str(folder), kind="directory", shards=[shard.path for shard in manifest.shards],
        manifest=str(manifest.path), created=manifest.created,
        config=manifest.config.to_dict(), clip_encoding=manifest.clip_encoding,
        expected={shard.path: ShardExpectation(shard.samples, shard.bytes, shard.split)
                  for shard in manifest.shards},
        totals=manifest.totals, splits=manifest.splits, issues=issues,
    )
    listed = set(target.shards)
    extra = [str(path) for path in sorted(folder.glob(SHARD_GLOB)) if str(path) not in listed]
    if extra:
        target.notes.append(f"{len(extra)} .tar file(s) in {folder / 'shards'} are not in the "
                            f"manifest (e.g. {Path(extra[0]).name}); loaders ignore them")
    return target


def _from_stats(folder: Path) -> Target:
    out = OutputDir(folder)
    shards = [str(path) for path in shards_on_disk(folder)]
    units = out.stats_units()
    if not shards and not units:
        raise ConfigError(f"{folder} holds neither {MANIFEST_NAME} nor {SHARD_GLOB}; pass a "
                          f"folder written by omni prepare (or run it into this one first)")
    target = Target(path=str(folder), kind="directory", shards=shards)
    videos, infos, configs = [], [], []
    for unit in units:
        _, stats = out.read_stats(unit)
        if stats is None:
            target.notes.append(f"{out.stats_path(unit)} is unreadable or malformed; its unit "
                                f"counts as unfinished")
            continue
        videos += stats.videos
        infos += stats.shards
        configs.append(stats.fingerprint)
        source = out.stats_path(unit)
        target.expected.update({
            listed_shard_path(folder, info.path, source): ShardExpectation(info.samples,
                                                                           info.bytes, info.split)
            for info in stats.shards})
    recorded = (f"counts are checked against the stats files of {len(configs)} finished "
                f"unit(s)" if configs else "there are no stats files either (shards copied "
                "without them?), so there are no recorded counts to check against")
    target.notes.append(
        f"no {MANIFEST_NAME}: prepare has not finished every unit (it is still running, was "
        f"interrupted, or was split with --part and other parts are missing: the last part to "
        f"finish writes it); {recorded}")
    if configs:
        target.config = dict(configs[0]["config"])
        target.clip_encoding = configs[0].get("clip_encoding")
        if any(other != configs[0] for other in configs[1:]):
            target.notes.append("the stats files record different configurations; re-run "
                                "omni prepare with --overwrite to make the folder consistent")
        totals = Totals.of(videos, len(infos), sum(info.bytes for info in infos))
        target.totals = totals.to_dict()
        target.splits = {split: counts.to_dict()
                         for split, counts in split_totals(videos, infos).items()}
        target.issues = [VideoIssue(v.source, v.status, v.reason or "") for v in videos
                         if v.status in (FAILED, SKIPPED)]
        target.issues += [VideoIssue(v.source, "warning", text) for v in videos
                          for text in v.warnings]
    on_disk = set(shards)
    missing = [path for path in target.expected if path not in on_disk]
    target.shards += missing  # read as missing, so summary and verify report them
    if configs:  # with no stats file at all, no shard can be told apart as stale
        target.unlisted = [path for path in shards if path not in target.expected]
    if target.unlisted:
        target.notes.append(f"{len(target.unlisted)} shard(s) belong to no finished unit (e.g. "
                            f"{Path(target.unlisted[0]).name}): left by an interrupted unit; "
                            f"re-running omni prepare removes them")
    return target


# --------------------------------------------------------------------------- reading tars
@dataclass
class RawSample:
    """One sample's members as bytes, grouped like webdataset groups them.

    `names` lists every member type in tar order, read or not, and `sizes` the bytes each
    declares; `members` holds the bytes of those that were asked for, are schema members and
    are within their cap; `too_large` says which ones were over it (left unread). `end` is the
    byte offset just past the sample's last member.
    """

    key: str
    names: list[str]
    members: dict[str, bytes]
    end: int
    sizes: dict[str, int] = field(default_factory=dict)
    too_large: list[str] = field(default_factory=list)  # why, per member over its cap

    @property
    def duplicates(self) -> list[str]:
        return sorted({name for name in self.names if self.names.count(name) > 1})

    def for_decoding(self) -> dict[str, bytes | None]:
        """The members as `schema.decode_sample` takes them: the bytes that were read, and
        every other member by name only (None), so that it is dropped undecoded."""
        return {name: self.members.get(name) for name in self.names}


def iter_raw_samples(path: str, read: Callable[[str], bool],
                     sample_format: dict[str, Any] | None = None) -> Iterator[RawSample]:
    """The samples of the shard at `path`, in order, with the bytes of the members `read` wants.

    Only schema members are ever read, and only within `schema.member_cap` of `sample_format`
    (the shard set's sizes, when known); the rest are skipped by seeking, not read. Only plain
    tars are read: a compressed one is unreadable. Raises ShardReadError after
    the last complete sample when the tar cannot be read to its end, including a tar cut
    short at a member boundary (tarfile reads that as a clean end; its missing end-of-archive
    blocks give it away). The sample being read when the damage showed is not yielded.
    """
    current: RawSample | None = None
    try:
        with open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                prefix, suffix = split_member_name(info.name)
                if prefix is None:  # no type at all: a sample of its own, with one odd member
                    prefix, suffix = info.name, ""
                suffix = suffix.lower()
                if current is not None and prefix != current.key:
                    yield current
                    current = None
                if current is None:
                    current = RawSample(prefix, [], {}, 0)
                current.names.append(suffix)
                current.sizes[suffix] = info.size
                if read(suffix) and suffix in SCHEMA_MEMBERS:
                    reason = oversized_member(suffix, info.size, sample_format)
                    if reason is not None:
                        current.too_large.append(reason)
                    else:
                        extracted = tar.extractfile(info)
                        current.members[suffix] = extracted.read() if extracted else b""
                current.end = info.offset_data + info.size
            # After the last member tarfile's offset is where the end-of-archive blocks start.
            handle.seek(tar.offset)
            tail = handle.read(_END_OF_ARCHIVE)
            if len(tail) < _END_OF_ARCHIVE or tail.count(0) != _END_OF_ARCHIVE:
                raise ShardReadError(path, f"no end-of-archive marker at byte {tar.offset}: "
                                           f"the file is cut short or damaged (an incomplete "
                                           f"copy or write)")
    except (OSError, tarfile.TarError) as err:
        raise ShardReadError(path, f"unreadable {_where(current)}: {type(err).__name__}: "
                                   f"{err} (shards are plain, uncompressed tars)") from err
    if current is not None:
        yield current


def _where(current: RawSample | None) -> str:
    """Where the damage showed: the sample being read is lost, the ones before it are fine."""
    return "from its start" if current is None else f"from sample {current.key!r} on"


def _parse_meta(raw: RawSample) -> tuple[SampleMeta | None, str | None]:
    """(metadata, transcript) of a raw sample that holds its json and txt bytes; None for
    what is missing or does not decode (verify says why)."""
    meta = text = None
    try:
        if MEMBER_JSON in raw.members:
            meta = SampleMeta.from_dict(decode_member(MEMBER_JSON, raw.members[MEMBER_JSON]))
        if MEMBER_TEXT in raw.members:
            text = decode_member(MEMBER_TEXT, raw.members[MEMBER_TEXT])
    except (CorruptMemberError, ValueError, TypeError):
        pass
    return meta, text


# --------------------------------------------------------------------------- summary
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
        data.update(
            expected_samples=self.expected_samples, shard_bytes=self.shard_bytes,
            footage_seconds=self.footage_seconds,
            text_fraction=_fraction(self.with_text, self.samples),
            audio_fraction=_fraction(self.with_audio, self.samples),
        )
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
            for raw in iter_raw_samples(path, _META_MEMBERS.__contains__):
                entry.samples += 1
                if progress is not None:
                    progress(1, raw.end - position)
                position = raw.end
                meta, text = _parse_meta(raw)
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
    return Summary(
        target=target, shards=entries, samples=samples, videos=len(spans),
        clip_seconds=round(clip_seconds, 3),
        span_seconds=round(sum(end - start for start, end in spans.values()), 3),
        with_text=with_text, with_audio=with_audio, unreadable_meta=unreadable,
        transcripts=[TranscriptCoverage(source, counts[0], counts[1])
                     for source, counts in sorted(coverage.items())],
        members=_probe_members(target), splits=splits,
    )


def _probe_members(target: Target) -> list[MemberInfo]:
    """Member dtypes and shapes from the first PROBE_SAMPLES samples that decode."""
    found: dict[str, list[Any]] = {}  # name -> [kind, dtype, shape, total bytes, count]
    decoded_samples = 0
    sample_format = target.sample_format
    for raw in _iter_all(target, lambda name: True, sample_format):
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


def _iter_all(target: Target, read: Callable[[str], bool],
              sample_format: dict[str, Any] | None = None) -> Iterator[RawSample]:
    """Samples of every readable shard in order; damaged shards end early, missing are skipped
    (`summarize` and `verify` report both)."""
    for path in target.shards:
        if not os.path.isfile(path):
            continue
        try:
            yield from iter_raw_samples(path, read, sample_format)
        except ShardReadError:
            continue


# --------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class SampleView:
    """One sample as text: where it comes from and what was said during it."""

    key: str
    shard: str
    source: str | None  # None when the json does not decode
    start: float | None
    end: float | None
    transcript_source: str | None
    has_audio: bool | None
    text: str | None


def list_samples(target: Target, count: int) -> list[SampleView]:
    """The first `count` samples in shard order, read from their json and txt only."""
    views: list[SampleView] = []
    if count <= 0:
        return views
    for path in target.shards:
        if not os.path.isfile(path):
            continue
        try:
            for raw in iter_raw_samples(path, _META_MEMBERS.__contains__):
                meta, text = _parse_meta(raw)
                views.append(SampleView(
                    raw.key, path, meta and meta.source, meta and meta.start, meta and meta.end,
                    meta and meta.transcript_source, meta and meta.has_audio, text))
                if len(views) == count:
                    return views
        except ShardReadError:
            continue
    return views


@dataclass(frozen=True)
class ExportedSample:
    """The files written for one sample (member -> path), or why none could be."""

    key: str
    files: dict[str, str]
    error: str | None = None


def export_samples(target: Target, out_dir: str | os.PathLike[str],
                   count: int) -> list[ExportedSample]:
    """Write the first `count` samples as files to look at, named after their keys.

    Per sample: ``<key>.frame.png`` (the middle frame), ``<key>.clip.gif`` (every frame at the
    clip's fps), ``<key>.sheet.png`` (the frames in a grid), ``<key>.mel.png`` (see
    `mel_image`) and ``<key>.txt`` (the transcript). A sample that does not decode is listed
    with its error and nothing written for it.
    """
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PipelineError(f"cannot create the export folder {folder}: "
                            f"{err.strerror or err}; choose a writable folder") from err
    exported: list[ExportedSample] = []
    used: set[str] = set()
    if count <= 0:
        return exported
    sample_format = target.sample_format
    for raw in _iter_all(target, lambda name: True, sample_format):
        exported.append(_export(raw, folder, _file_stem(raw.key, used), sample_format))
        if len(exported) == count:
            break
    return exported


def _export(raw: RawSample, folder: Path, stem: str,
            sample_format: dict[str, Any] | None) -> ExportedSample:
    """One sample's files, decoded as the loader decodes it (sizes checked first)."""
    if raw.too_large:
        return ExportedSample(raw.key, {}, "; ".join(raw.too_large))
    try:
        sample, _ = decode_sample(raw.for_decoding(), sample_format)
        meta = SampleMeta.from_dict(sample[MEMBER_JSON])
        clip = next(value for name, value in sample.items() if name.startswith(CLIP_PREFIX))
        files = _write_files(folder, stem, meta, sample[MEMBER_IMAGE], clip,
                             sample[MEMBER_MEL], sample[MEMBER_TEXT])
    except (CorruptMemberError, KeyError, ValueError, TypeError, StopIteration) as err:
        return ExportedSample(raw.key, {}, f"{type(err).__name__}: {err}")
    return ExportedSample(raw.key, files)


def _file_stem(key: str, used: set[str]) -> str:
    """A file name from a sample key: only [A-Za-z0-9_-], unique within one export."""
    stem = base = _UNSAFE_NAME.sub("_", key) or "sample"
    number = 1
    while stem in used:
        number += 1
        stem = f"{base}-{number}"
    used.add(stem)
    return stem


def _write_files(folder: Path, stem: str, meta: SampleMeta, image: np.ndarray,
                 clip: np.ndarray, mel: np.ndarray, text: str) -> dict[str, str]:
    paths = {name: folder / f"{stem}.{name}" for name in
             ("frame.png", "clip.gif", "sheet.png", "mel.png", "txt")}
    try:
        Image.fromarray(image).save(paths["frame.png"])
        pictures = [Image.fromarray(picture) for picture in clip]  # (H, W, 3) each
        pictures[0].save(paths["clip.gif"], save_all=True, append_images=pictures[1:],
                         duration=round(1000 / meta.fps), loop=0)
        Image.fromarray(contact_sheet(clip)).save(paths["sheet.png"])
        Image.fromarray(mel_image(mel)).save(paths["mel.png"])
        paths["txt"].write_text(text, encoding="utf-8")
    except OSError as err:
        raise PipelineError(f"cannot write to the export folder {folder}: "
                            f"{err.strerror or err}; choose a writable folder") from err
    return {name: str(path) for name, path in paths.items()}


def contact_sheet(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) frames in a near-square grid, row by row: (rows * H, cols * W, 3).

    Cells after the last frame stay black (16 frames make a 4 x 4 sheet).
    """
    count, height, width, channels = frames.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    sheet = np.zeros((rows * height, columns * width, channels), dtype=frames.dtype)
    for index, picture in enumerate(frames):
        row, column = divmod(index, columns)
        sheet[row * height:(row + 1) * height, column * width:(column + 1) * width] = picture
    return sheet


def mel_image(mel: np.ndarray) -> np.ndarray:
    """A (M, T) log-mel as a (M, T, 3) uint8 picture: time to the right, low frequencies at the
    bottom, viridis colours.

    Normalised per image (its minimum dark, its maximum bright), as spectrogram viewers do, so
    quiet speech shows its structure; a constant mel (a silent track) comes out uniformly dark.
    """
    values = np.flipud(mel.astype(np.float64))  # (M, T), row 0 is now the highest band
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return colormap(scaled)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] of any shape to viridis RGB: shape + (3,), uint8."""
    stops = np.linspace(0.0, 1.0, len(_VIRIDIS))
    clipped = np.clip(values, 0.0, 1.0)
    channels = [np.interp(clipped, stops, _VIRIDIS[:, channel]) for channel in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


# --------------------------------------------------------------------------- verify
@dataclass(frozen=True)
class Problem:
    """One thing wrong: in which shard, which sample (None: the shard or the set), and what."""

    shard: str | None
    key: str | None
    message: str


@dataclass
class ShardReport:
    """What verifying one shard found (returned from a worker process, so plain data)."""

    path: str
    samples: int
    bytes: int | None
    keys: list[str]
    problems: list[Problem]
    problem_count: int


@dataclass
class VerifyResult:
    """The outcome of `verify`: ok iff `problem_count` is 0; `problems` holds the first few."""

    shards: int
    samples: int
    bytes: int
    problems: list[Problem]
    problem_count: int
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "samples_per_s": round(self.samples_per_s, 1)}


class _Problems:
    """The first `limit` problems in detail, and how many there were in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept: list[Problem] = []
        self.count = 0

    def add(self, shard: str | None, key: str | None, message: str) -> None:
        self.count += 1
        if len(self.kept) < self.limit:
            self.kept.append(Problem(shard, key, message))


def sample_problems(raw: RawSample, sample_format: dict[str, Any] | None,
                    clip_encoding: str | None) -> list[str]:
    """Everything wrong with one raw sample whose members were all asked for."""
    problems = [f"member {name!r} appears twice" for name in raw.duplicates]
    if raw.too_large:
        return [*problems, *raw.too_large]
    try:
        sample, dropped = decode_sample({"__key__": raw.key, **raw.for_decoding()},
                                        sample_format)
    except CorruptMemberError as err:
        return [*problems, str(err)]
    problems += [f"member {name!r} is not part of shard schema v1 (unknown or unsafe type); "
                 f"it was not deserialised" for name in dropped]
    problems += validate_sample(sample, sample_format)
    meta = sample.get(MEMBER_JSON)
    encoding = meta.get("clip_encoding") if isinstance(meta, dict) else None
    if clip_encoding is not None and encoding is not None and encoding != clip_encoding:
        problems.append(f"json clip_encoding is {encoding!r}, the shard set's is "
                        f"{clip_encoding!r}")
    return problems


def verify_shard(path: str, sample_format: dict[str, Any] | None, clip_encoding: str | None,
                 limit: int = PROBLEM_LIMIT, progress: ProgressFn | None = None) -> ShardReport:
    """Decode and check every sample of one shard (see `verify`); module-level so that a
    worker process can run it."""
    problems = _Problems(limit)
    keys: list[str] = []
    if not os.path.isfile(path):
        problems.add(path, None, "the shard is missing (listed, but not on disk)")
        return ShardReport(path, 0, None, keys, problems.kept, problems.count)
    size = os.path.getsize(path)
    position = 0
    try:
        for raw in iter_raw_samples(path, lambda name: True, sample_format):
            keys.append(raw.key)
            for message in sample_problems(raw, sample_format, clip_encoding):
                problems.add(path, raw.key, message)
            if progress is not None:
                progress(1, raw.end - position)
            position = raw.end
    except ShardReadError as err:
        problems.add(path, None, err.reason)
    if progress is not None:
        progress(0, size - position)
    return ShardReport(path, len(keys), size, keys, problems.kept, problems.count)


def verify(target: Target, workers: int = 1, progress: ProgressFn | None = None,
           limit: int = PROBLEM_LIMIT) -> VerifyResult:
    """Read and check every sample of `target`; collect every mismatch (see module doc).

    The samples are checked against the recorded prepare config or, without one, against the
    sizes in the first sample whose json decodes. With `workers` > 1, shards are verified in
    that many processes and `progress` advances shard by shard.
    """
    started = time.monotonic()
    sample_format = target.sample_format or _format_of_first_sample(target)
    reports: list[ShardReport | None] = [None] * len(target.shards)
    if workers > 1 and len(target.shards) > 1:
        with ProcessPoolExecutor(min(workers, len(target.shards)),
                                 mp_context=_process_context()) as pool:
            futures = {pool.submit(verify_shard, path, sample_format, target.clip_encoding,
                                   limit): index for index, path in enumerate(target.shards)}
            for future in as_completed(futures):
                report = reports[futures[future]] = future.result()
                if progress is not None:
                    progress(report.samples, report.bytes or 0)
    else:
        for index, path in enumerate(target.shards):
            reports[index] = verify_shard(path, sample_format, target.clip_encoding, limit,
                                          progress)
    done = [report for report in reports if report is not None]
    problems = _Problems(limit)
    for report in done:
        for problem in report.problems:
            problems.add(problem.shard, problem.key, problem.message)
        problems.count += report.problem_count - len(report.problems)
    _check_keys(done, problems)
    _check_records(target, done, problems)
    return VerifyResult(
        shards=len(done), samples=sum(report.samples for report in done),
        bytes=sum(report.bytes or 0 for report in done), problems=problems.kept,
        problem_count=problems.count, elapsed_s=time.monotonic() - started,
    )


def _process_context() -> multiprocessing.context.BaseContext:
    """Worker processes forked from a server that has imported this module (and with it
    numpy, PIL and PyAV) once, rather than each importing them; plain spawn where there is no
    forkserver. Not fork: the caller may run threads (a progress bar)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


def _format_of_first_sample(target: Target) -> dict[str, Any] | None:
    for raw in _iter_all(target, _META_MEMBERS.__contains__):
        meta, _ = _parse_meta(raw)
        if meta is not None:
            return expected_from_meta(meta.to_dict())
    return None


def _check_keys(reports: list[ShardReport], problems: _Problems) -> None:
    """A key may appear once in the whole set: webdataset would merge or confuse repeats."""
    first: dict[str, str] = {}
    for report in reports:
        for key in report.keys:
            if key in first:
                where = "earlier in this shard" if first[key] == report.path else first[key]
                problems.add(report.path, key, f"duplicate key (also {where})")
            else:
                first[key] = report.path


def _check_records(target: Target, reports: list[ShardReport], problems: _Problems) -> None:
    """Counts and sizes against the manifest (or stats files), shard by shard and in total."""
    source = "the manifest" if target.manifest else "its unit's stats file"
    unlisted = set(target.unlisted)
    for report in reports:
        recorded = target.expected.get(report.path)
        if report.path in unlisted:
            problems.add(report.path, None, "the shard belongs to no finished unit (left by an "
                                            "interrupted unit; re-running prepare removes it)")
        if recorded is None or report.bytes is None:
            continue
        if report.samples != recorded.samples:
            problems.add(report.path, None, f"{report.samples} samples, {source} says "
                                            f"{recorded.samples}")
        if report.bytes != recorded.bytes:
            problems.add(report.path, None, f"{report.bytes} bytes, {source} says "
                                            f"{recorded.bytes}")
    totals = target.totals
    if not target.manifest or totals is None:
        return
    counted = {"clips": sum(report.samples for report in reports),
               "shards": sum(report.bytes is not None for report in reports),
               "bytes": sum(report.bytes or 0 for report in reports)}
    for name, value in counted.items():
        if name in totals and totals[name] != value:
            problems.add(None, None, f"the shards hold {value} {name.replace('clips', 'samples')}"
                                     f" in all, the manifest totals say {totals[name]}")
    listed = sum(entry.samples for entry in target.expected.values())
    if "clips" in totals and listed != totals["clips"]:
        problems.add(None, None, f"the manifest's shard list holds {listed} samples but its "
                                 f"totals say {totals['clips']} clips (a damaged manifest?)")
    for split, recorded in (target.splits or {}).items():
        mine = [report for report in reports if target.split_of(report.path) == split]
        counted = {"clips": sum(report.samples for report in mine),
                   "shards": sum(report.bytes is not None for report in mine)}
        for name, value in counted.items():
            if name in recorded and recorded[name] != value:
                noun = name.replace("clips", "samples")
                problems.add(None, None, f"the {split} shards hold {value} {noun}, the "
                                         f"manifest's {split} split says {recorded[name]}")

