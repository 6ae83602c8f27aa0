"""Reading a shard for `omni inspect`: its samples grouped as webdataset groups them, with the
bytes of only the members a caller asks for (the rest are skipped by seeking).

It reads the way the streaming loader (`loader.samples.tar_samples`) does: plain local tars,
member names split by the same rule (`pipeline.shards.shardset.split_member_name`), each member's
declared size checked against `decode.member_cap` before it is read. It stays a reader of its
own because its policy differs: the loader streams URLs, counts damage in its stats and drops
what it cannot use, while inspect reads only some members, keeps every name (an odd member is
a finding, not noise) and checks each tar's end-of-archive blocks; and the loader's module
imports torch, which `omni inspect` must not."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import PipelineError
from pipeline.inspect.target import Target
from pipeline.shards.decode import CorruptMemberError, decode_member, oversized_member
from pipeline.shards.schema import MEMBER_JSON, MEMBER_TEXT, SCHEMA_MEMBERS, SampleMeta
from pipeline.shards.shardset import split_member_name

_END_OF_ARCHIVE = 1024  # a tar ends with two zero 512-byte blocks
META_MEMBERS = frozenset({MEMBER_JSON, MEMBER_TEXT})  # what the summary and listing read

# Called with the samples and bytes read since the previous call, for progress bars.
ProgressFn = Callable[[int, int], None]


class ShardReadError(PipelineError):
    """A shard that cannot be read to its end: unreadable, cut short, or not a tar.

    `reason` says what is wrong without the path, for reports that already show it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class RawSample:
    """One sample's members as bytes, grouped like webdataset groups them.

    `names` lists every member type in tar order, read or not, and `sizes` the bytes each
    declares; `members` holds the bytes of those that were asked for, are schema members and
    are within their cap; `too_large` says which ones were over it (left unread). `end` is the
    byte offset just past the sample's last member in the tar at `shard`."""

    shard: str
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
        """The members as `decode.decode_sample` takes them: the bytes that were read, and
        every other member by name only (None), so that it is dropped undecoded."""
        return {name: self.members.get(name) for name in self.names}


def iter_raw_samples(path: str, read: Callable[[str], bool],
                     sample_format: dict[str, Any] | None = None) -> Iterator[RawSample]:
    """The samples of the shard at `path`, in order, with the bytes of the members `read` wants.

    Only schema members are ever read, and only within `decode.member_cap` of `sample_format`
    (the shard set's sizes, when known); the rest are skipped by seeking, not read. Only plain
    tars are read: a compressed one is unreadable. Raises ShardReadError after
    the last complete sample when the tar cannot be read to its end, including a tar cut
    short at a member boundary (tarfile reads that as a clean end; its missing end-of-archive
    blocks give it away). The sample being read when the damage showed is not yielded."""
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
                    current = RawSample(path, prefix, [], {}, 0)
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


def parse_meta(raw: RawSample) -> tuple[SampleMeta | None, str | None]:
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


def iter_all(target: Target, read: Callable[[str], bool],
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
