"""The layout of a prepared folder, and what makes a unit count as done.

```
OUT_DIR/
  shards/unit-000012-000000.tar        finished shards (temporary ones end in ".tar.tmp")
  shards/unit-000012-eval-000000.tar   those of its eval-split videos (`pipeline.shards.split`)
  stats/unit-000012.json               commit marker of unit 12, written last
  tmp/unit-000012/                     part files of unit 12 while it is being prepared
  tmp/part-2-of-8/.omni.lock           the lock of a `--part 2/8` run (`pipeline.lock`)
  manifest.json                        once every unit is done
  .omni.lock                           the lock of a run without `--part`
```

A unit is **done** iff its stats file exists, was written for the same `Fingerprint` (schema
version, clip encoding, `PrepareConfig`), lists the same videos as the unit planned now, and
every shard it lists exists with its recorded size. Anything else about a unit (temporary
files, shards renamed before a crash cut the stats write short, outputs of an older input
listing) is stale and removed before the unit is prepared again.

Only these names are ever created or deleted, so an output folder may hold other files; but
prepare starts only in a new or empty folder or one that has `shards/` or `stats/`
(`OutputDir.unrelated_entries`), so that a mistyped OUT_DIR (`omni prepare videos .`) does not
spread shards through a folder of other things."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import SCHEMA_VERSION, PrepareConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.lock import LOCK_NAME
from pipeline.prepare.plan import Part, WorkUnit
from pipeline.shards.files import (
    SHARD_DIR,
    TMP_SUFFIX,
    ShardInfo,
    listed_shard_path,
    unit_name,
    unit_shard_paths,
)
from pipeline.shards.manifest import MANIFEST_NAME, Totals, split_totals
from pipeline.shards.outcome import FAILED, SKIPPED, VideoOutcome
from pipeline.shards.split import TRAIN, parse_split

STATS_DIR = "stats"
TMP_DIR = "tmp"
# Config fields added after folders were prepared without them, and the value a stats file
# that lacks one counts as. Runs before `follow_symlinks` read every symlink, but their units
# differ from a run's that does not only where a link leaves the input folder: resuming such
# a folder must not need --overwrite.
_ADDED_FIELDS: dict[str, Any] = {"follow_symlinks": False}


@dataclass(frozen=True)
class Fingerprint:
    """Everything that changes the bytes of a sample; outputs of different ones never mix."""

    config: PrepareConfig
    clip_encoding: str
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "clip_encoding": self.clip_encoding,
                "config": self.config.to_dict()}

    def differences(self, data: dict[str, Any]) -> list[str]:
        """How the fingerprint stored in `data` (a stats file) differs from this one, as
        "field: stored -> ours" lines; empty when they match."""
        ours = self.to_dict()
        stored_config = data.get("config") if isinstance(data.get("config"), dict) else {}
        stored_config = {**_ADDED_FIELDS, **stored_config}
        lines = [f"{name}: {data.get(name)!r} -> {ours[name]!r}"
                 for name in ("schema_version", "clip_encoding") if data.get(name) != ours[name]]
        for name in sorted(set(ours["config"]) | set(stored_config)):
            stored, wanted = stored_config.get(name, "<unset>"), ours["config"].get(name, "<unset>")
            if stored != wanted:
                lines.append(f"{name}: {stored!r} -> {wanted!r}")
        return lines


@dataclass
class UnitStats:
    """The contents of `stats/unit-NNNNNN.json`: a unit's videos, shards and fingerprint."""

    unit: int
    fingerprint: dict[str, Any]
    sources: list[str]
    videos: list[VideoOutcome]
    shards: list[ShardInfo]
    finished_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.fingerprint, "unit": self.unit, "sources": self.sources,
                "finished_at": self.finished_at,
                "videos": [video.to_dict() for video in self.videos],
                "shards": [shard.to_dict() for shard in self.shards]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnitStats:
        """Parse a stats file; raises ValueError/KeyError/TypeError when it is malformed."""
        fingerprint = {name: data[name] for name in ("schema_version", "clip_encoding", "config")}
        return cls(unit=int(data["unit"]), fingerprint=fingerprint,
                   sources=[str(source) for source in data["sources"]],
                   videos=[VideoOutcome.from_dict(video) for video in data["videos"]],
                   shards=[ShardInfo(str(s["path"]), int(s["samples"]), int(s["bytes"]),
                                     parse_split(s.get("split", TRAIN))) for s in data["shards"]],
                   finished_at=str(data.get("finished_at", "")))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to a temporary name beside `path`, flush it to disk, then rename: readers
    see the old file or the new one, never a part. The temporary name carries the host and
    process id so that two parts writing the same file at once (the manifest, on a shared
    filesystem) do not collide."""
    temporary = path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            # ASCII escapes: a file name that is not valid UTF-8 (latin-1 bytes from an old
            # share) reaches us as lone surrogates, which a UTF-8 stream cannot encode.
            json.dump(data, handle, indent=1, ensure_ascii=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class OutputDir:
    """Paths inside a prepared folder and the operations on them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shards = root / SHARD_DIR
        self.stats = root / STATS_DIR
        self.tmp = root / TMP_DIR
        self.manifest = root / MANIFEST_NAME

    def create(self) -> None:
        """Create the folders; raises PipelineError when the output folder is unusable."""
        if self.root.exists() and not self.root.is_dir():
            raise PipelineError(f"output path {self.root} exists and is not a folder; pass a "
                                f"folder (it is created if missing)")
        try:
            for folder in (self.shards, self.stats, self.tmp):
                folder.mkdir(parents=True, exist_ok=True)
            probe = self.tmp / f".write-test.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise PipelineError(f"cannot write to the output folder {self.root}: "
                                f"{err.strerror or err}; choose a writable folder") from err

    def unrelated_entries(self) -> list[str]:
        """The names in the folder, sorted, when it holds anything but a lock file and has no
        `shards/` or `stats/` folder (which prepare creates first thing); else []."""
        if not self.root.is_dir() or self.shards.is_dir() or self.stats.is_dir():
            return []
        return sorted(entry.name for entry in self.root.iterdir() if entry.name != LOCK_NAME)

    def lock_folder(self, part: Part) -> Path:
        """The folder whose lock a run of `part` holds alone: the output folder itself for a
        whole run; for one part of several (which share the output folder's lock), a folder
        of its own, so that the parts of a job array run side by side while two runs of one
        part cannot."""
        if part.count == 1:
            return self.root
        return self.tmp / f"part-{part.index}-of-{part.count}"

    def stats_path(self, unit: int) -> Path:
        return self.stats / f"{unit_name(unit)}.json"

    def unit_tmp(self, unit: int) -> Path:
        return self.tmp / unit_name(unit)

    def stats_units(self) -> list[int]:
        """Unit numbers that have a stats file, sorted."""
        numbers = (path.stem.removeprefix("unit-") for path in self.stats.glob("unit-*.json"))
        return sorted(int(number) for number in numbers if number.isdigit())

    def read_stats(self, unit: int) -> tuple[dict[str, Any] | None, UnitStats | None]:
        """(raw JSON, parsed stats) of a unit; (None, None) when missing, (raw or None, None)
        when unreadable or malformed."""
        try:
            raw = json.loads(self.stats_path(unit).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # missing or unreadable
            return None, None
        if not isinstance(raw, dict):
            return None, None
        try:
            return raw, UnitStats.from_dict(raw)
        except (KeyError, TypeError, ValueError):
            return raw, None

    def is_done(self, unit: WorkUnit, fingerprint: Fingerprint) -> UnitStats | None:
        """The unit's stats when it is done (see the module docstring), else None."""
        raw, stats = self.read_stats(unit.index)
        if (raw is None or stats is None or fingerprint.differences(raw)
                or stats.unit != unit.index or stats.sources != unit.rel_paths):
            return None
        for shard in stats.shards:
            try:  # a stats file naming anything but its own shards is not ours: redo the unit
                if Path(listed_shard_path(self.root, shard.path, self.stats_path(unit.index))
                        ).stat().st_size != shard.bytes:
                    return None
            except (OSError, ConfigError):
                return None
        return stats

    def write_stats(self, stats: UnitStats) -> None:
        write_json_atomic(self.stats_path(stats.unit), stats.to_dict())

    def clear_unit(self, unit: int) -> None:
        """Remove every output of a unit: stats first (so it stops counting as done), then its
        shards (final and temporary) and part files."""
        self.stats_path(unit).unlink(missing_ok=True)
        for path in self.stats.glob(f"{unit_name(unit)}.json.*{TMP_SUFFIX}"):
            path.unlink(missing_ok=True)
        for path in unit_shard_paths(self.root, unit):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.unit_tmp(unit), ignore_errors=True)

    def clear_all(self) -> None:
        """`--overwrite` of a whole folder: remove the manifest and every unit's outputs."""
        self.manifest.unlink(missing_ok=True)
        for folder in (self.stats, self.shards, self.tmp):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if not path.name.startswith("unit-"):
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_manifest(out: OutputDir, fingerprint: Fingerprint, units: list[UnitStats]) -> Path:
    """Write `manifest.json` for the done `units` (all of them, in unit order) and return
    its path."""
    videos = [video for unit in units for video in unit.videos]
    infos = [shard for unit in units for shard in unit.shards]
    write_json_atomic(out.manifest, {
        **fingerprint.to_dict(),
        "created": utc_now(),
        "units": len(units),
        "shards": [{**shard.to_dict(), "unit": unit.unit} for unit in units
                   for shard in unit.shards],
        "totals": Totals.of(videos, len(infos), sum(shard.bytes for shard in infos)).to_dict(),
        "splits": {split: totals.to_dict()
                   for split, totals in split_totals(videos, infos).items()},
        "failures": [{"source": v.source, "reason": v.reason} for v in videos
                     if v.status == FAILED],
        "skipped": [{"source": v.source, "reason": v.reason} for v in videos
                    if v.status == SKIPPED],
        "warnings": [{"source": v.source, "warning": warning} for v in videos
                     for warning in v.warnings]})
    return out.manifest
