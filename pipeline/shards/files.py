"""Shard files: a video's samples in a temporary tar, and a unit's shards built from them.

Two steps, so that parallel workers never share a file and no shard is ever visible half
written:

1. A worker process writes the samples of its one video to a *part file*
   (`tmp/unit-NNNNNN/<video>.<token>.tar`) with the stdlib's `tarfile`, noting the byte
   offset where each sample's first member starts. A video that fails leaves only a part
   file that is deleted.
2. When every video of the unit is finished, the parent copies the samples' byte ranges, in
   video order, into shards of `samples_per_shard` samples under temporary names
   (`shards/unit-NNNNNN-SSSSSS.tar.tmp`), flushes each to disk, and only then renames them all
   to their final names. A tar is a sequence of 512-byte blocks, so a run of samples is a
   contiguous byte range that can be copied without parsing; each shard ends with the two
   zero blocks that mark the end of an archive.

The videos of the eval split (`pipeline.shards.split`) go to shards of their own,
`unit-NNNNNN-eval-SSSSSS.tar`, so a loader takes one split by its shard list alone. The names
keep the unit prefix (`unit-NNNNNN-`, which clearing a unit removes) and the `.tar` suffix,
and a unit's train shards sort before its eval shards.

Member headers carry a fixed mtime (0) and owner, so the same input and configuration give
byte-identical shards on every run, whether or not it was interrupted and resumed. The mtime
is the integer 0, not webdataset's float: `tarfile` writes a float mtime into a pax header
before every member, which a loader then parses (about half of its tar reading,
`bench/loader.py`, issue 19)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.errors import ConfigError
from pipeline.shards.split import EVAL, SPLITS, TRAIN, Split

SHARD_DIR = "shards"
TMP_SUFFIX = ".tmp"
# Fixed header fields: reproducible shards (cf. SOURCE_DATE_EPOCH in reproducible builds).
MEMBER_MTIME = 0
MEMBER_MODE = 0o444
MEMBER_OWNER = "bigdata"  # user and group, as webdataset's TarWriter writes them
_END_OF_ARCHIVE = bytes(1024)  # two zero 512-byte blocks
_COPY_CHUNK = 1 << 20
_EVAL_SHARD = re.compile(rf"unit-\d{{6}}-{EVAL}-\d{{6}}\.tar")


@dataclass
class PartFile:
    """A video's samples in a temporary tar: sample i spans bytes [offsets[i], offsets[i+1])
    and the last one ends at `end`."""

    path: Path
    offsets: list[int] = field(default_factory=list)
    end: int = 0

    @property
    def samples(self) -> int:
        return len(self.offsets)


class PartWriter(contextlib.AbstractContextManager["PartWriter"]):
    """Writes one video's samples to a part file, remembering where each sample starts.

    Use as a context manager; `close` returns the finished `PartFile`. OSError from the
    filesystem (a full disk) propagates unchanged so the caller can tell it from bad input."""

    def __init__(self, path: Path) -> None:
        self.part = PartFile(path)
        self._file = open(path, "wb")  # closed in close()
        # Not webdataset's TarWriter: its package imports torch (seconds per worker). The
        # members get TarWriter's headers but for the integer mtime (no pax header each).
        self._tar = tarfile.open(fileobj=self._file, mode="w|")

    def write(self, sample: Mapping[str, str | bytes]) -> None:
        """Append one sample (`__key__` plus bytes members, as `encode.encode_sample` makes)."""
        self.part.offsets.append(self._tar.offset)
        key = sample["__key__"]
        for name in sorted(sample):
            if name == "__key__":
                continue
            value = sample[name]
            data = value.encode("utf-8") if isinstance(value, str) else value
            member = tarfile.TarInfo(f"{key}.{name}")
            member.size, member.mtime, member.mode = len(data), MEMBER_MTIME, MEMBER_MODE
            member.uname = member.gname = MEMBER_OWNER
            self._tar.addfile(member, io.BytesIO(data))
        self.part.end = self._tar.offset

    def close(self) -> PartFile:
        """Finish the tar, flush it to the OS and return what was written."""
        if not self._file.closed:
            self._tar.close()
            self._file.close()
        return self.part

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard: its path relative to the output folder, samples, size in bytes and
    the split its samples belong to."""

    path: str
    samples: int
    bytes: int
    split: Split = TRAIN

    def to_dict(self) -> dict[str, str | int]:
        return asdict(self)


def unit_name(index: int) -> str:
    """Zero-padded so that names sort in unit order (6 digits: a million units)."""
    return f"unit-{index:06d}"


def shard_name(unit: int, shard: int, split: Split = TRAIN) -> str:
    """`unit-000012-000003.tar`: shard 3 of unit 12's train samples;
    `unit-000012-eval-000003.tar`: shard 3 of its eval samples (names sort in sample order)."""
    infix = "" if split == TRAIN else f"{split}-"
    return f"{unit_name(unit)}-{infix}{shard:06d}.tar"


def shard_split(name: str) -> Split:
    """The split a shard's file name (or path) says, for shards without a manifest: "eval" for
    `unit-NNNNNN-eval-SSSSSS.tar`, "train" for every other name."""
    return EVAL if _EVAL_SHARD.fullmatch(Path(name).name) else TRAIN


def unit_shard_paths(out_dir: Path, unit: int) -> list[Path]:
    """Every final or temporary shard file of a unit that exists now."""
    prefix = unit_name(unit) + "-"
    folder = out_dir / SHARD_DIR
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.name.startswith(prefix))


def _copy_range(src: BinaryIO, dst: BinaryIO, start: int, stop: int) -> None:
    src.seek(start)
    remaining = stop - start
    while remaining > 0:
        chunk = src.read(min(remaining, _COPY_CHUNK))
        if not chunk:
            raise OSError(f"part file ended {remaining} bytes early")
        dst.write(chunk)
        remaining -= len(chunk)


_Run = tuple[PartFile, int, int]  # samples [first, stop) of one part file


def _batches(parts: Sequence[PartFile], samples_per_shard: int) -> list[list[_Run]]:
    """Group every sample of `parts` into shards: per shard, its runs of consecutive samples."""
    shards: list[list[_Run]] = []
    current: list[_Run] = []
    filled = 0
    for part in parts:
        first = 0
        while first < part.samples:
            take = min(samples_per_shard - filled, part.samples - first)
            current.append((part, first, first + take))
            first += take
            filled += take
            if filled == samples_per_shard:
                shards.append(current)
                current, filled = [], 0
    if current:
        shards.append(current)
    return shards


def write_unit_shards(
    parts: Mapping[Split, Sequence[PartFile]], out_dir: Path, unit: int, samples_per_shard: int
) -> list[ShardInfo]:
    """Build a unit's shards from its videos' part files (per split, in video order) and
    publish them: train shards first, then eval shards.

    All shards of both splits are written and flushed under temporary names first, then
    renamed; if anything fails (e.g. the disk is full) the temporary files are removed and the
    error propagates, so a final name only ever holds a complete shard. Part files are left to
    the caller. A split without samples has no shards."""
    folder = out_dir / SHARD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    batches = [(split, index, runs) for split in SPLITS
               for index, runs in enumerate(_batches(parts.get(split, ()), samples_per_shard))]
    written: list[tuple[Path, Path, int, Split]] = []  # (temporary, final, samples, split)
    try:
        for split, index, runs in batches:
            final = folder / shard_name(unit, index, split)
            temporary = final.with_name(final.name + TMP_SUFFIX)
            with open(temporary, "wb") as dst:
                written.append((temporary, final, 0, split))
                samples = 0
                for part, first, stop in runs:
                    with open(part.path, "rb") as src:
                        start = part.offsets[first]
                        end = part.offsets[stop] if stop < part.samples else part.end
                        _copy_range(src, dst, start, end)
                    samples += stop - first
                dst.write(_END_OF_ARCHIVE)
                dst.flush()
                # A full disk may only surface at fsync; a shard must be on disk before its
                # name says it is complete.
                os.fsync(dst.fileno())
            written[-1] = (temporary, final, samples, split)
    except BaseException:
        for temporary, _, _, _ in written:
            temporary.unlink(missing_ok=True)
        raise
    shards = []
    for temporary, final, samples, split in written:
        os.replace(temporary, final)
        shards.append(ShardInfo(final.relative_to(out_dir).as_posix(), samples,
                                final.stat().st_size, split))
    return shards


# The only shard entry a manifest or stats file may hold: a plain file name under shards/.
_SHARD_ENTRY = re.compile(rf"{SHARD_DIR}/[A-Za-z0-9_][A-Za-z0-9_.-]*\.tar")


def inside_shard_dir(folder: Path, path: Path) -> bool:
    """Whether `path`, links followed, is a file name directly in `folder`'s shards/."""
    try:
        return path.resolve().parent == (folder / SHARD_DIR).resolve()
    except (OSError, RuntimeError):  # a link loop
        return False


def listed_shard_path(folder: Path, entry: Any, source: Path) -> str:
    """The path of a shard that `source` (a manifest or a unit's stats file in `folder`) lists
    as `entry`: ``folder / entry``, once `entry` is ``shards/<name>.tar`` (relative, no "..",
    no URL or ``pipe:``, no backslash) and the file, links followed, lies in folder/shards.
    Raises ConfigError naming `source` and the entry otherwise."""
    if not isinstance(entry, str) or not _SHARD_ENTRY.fullmatch(entry):
        raise ConfigError(f"{source} lists the shard {entry!r}; a prepared folder lists only "
                          f"{SHARD_DIR}/<name>.tar files inside it (never an absolute path, "
                          f"'..', a URL or pipe:); this one was not written by omni prepare: "
                          f"re-run omni prepare to rewrite it")
    path = folder / entry
    if not inside_shard_dir(folder, path):
        raise ConfigError(f"{source} lists the shard {entry!r}, a link that leads outside "
                          f"{folder / SHARD_DIR}; copy the shard itself into the folder")
    return str(path)
