"""`omni inspect --verify`: every member of every sample decoded with `decode.decode_sample`
(nothing is ever unpickled; unknown or unsafe members are problems, never read) and checked
with `validate.validate_sample` against the prepare config; sample counts and sizes against the
manifest, shard by shard, per split and in total; keys duplicated anywhere in the set (both
splits together: a video is in one split only); unreadable and truncated tars. Shards can be
verified in parallel processes."""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.inspect.reader import (
    META_MEMBERS,
    ProgressFn,
    RawSample,
    ShardReadError,
    iter_all,
    iter_raw_samples,
    parse_meta,
)
from pipeline.inspect.target import Target
from pipeline.prepare.processes import process_context
from pipeline.shards.decode import CorruptMemberError, decode_sample
from pipeline.shards.schema import MEMBER_JSON, expected_from_meta
from pipeline.shards.validate import validate_sample

PROBLEM_LIMIT = 100  # problems `verify` keeps in detail; the rest are only counted


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


@dataclass
class _Problems:
    """The first `limit` problems in detail, and how many there were in all."""

    limit: int
    kept: list[Problem] = field(default_factory=list)
    count: int = 0

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
        sample, dropped = decode_sample({"__key__": raw.key, **raw.for_decoding()}, sample_format)
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
    that many processes and `progress` advances shard by shard."""
    started = time.monotonic()
    sample_format = target.sample_format or _format_of_first_sample(target)
    reports: list[ShardReport | None] = [None] * len(target.shards)
    if workers > 1 and len(target.shards) > 1:
        with ProcessPoolExecutor(min(workers, len(target.shards)),
                                 mp_context=process_context([__name__])) as pool:
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
    return VerifyResult(shards=len(done), samples=sum(report.samples for report in done),
                        bytes=sum(report.bytes or 0 for report in done), problems=problems.kept,
                        problem_count=problems.count, elapsed_s=time.monotonic() - started)


def _format_of_first_sample(target: Target) -> dict[str, Any] | None:
    for raw in iter_all(target, META_MEMBERS.__contains__):
        meta, _ = parse_meta(raw)
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
        for what, found, noted in (("samples", report.samples, recorded.samples),
                                   ("bytes", report.bytes, recorded.bytes)):
            if found != noted:
                problems.add(report.path, None, f"{found} {what}, {source} says {noted}")
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
