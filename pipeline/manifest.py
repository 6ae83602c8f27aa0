"""`OUT_DIR/manifest.json`: the table of contents of a finished prepared folder.

Written (atomically: temporary name, then rename) only once every unit of the plan is done,
by whichever `--part` finishes last, so its presence means the folder is complete. It is built
from the units' stats files alone, so any part can write it and rewriting it is idempotent
(only `created` changes). Readers (`pipeline.loader`, `omni inspect`) take the shard list,
the sample counts and the `PrepareConfig` from it:

```
{"schema_version": 1, "clip_encoding": "mp4", "config": {PrepareConfig fields},
 "created": "2025-01-31T12:00:00Z", "units": 3,
 "shards": [{"path": "shards/unit-000000-000000.tar", "samples": 812, "bytes": 51234816,
             "unit": 0}, ...],
 "totals": {"videos", "prepared", "failed", "skipped", "clips", "clips_with_text",
            "footage_seconds", "shards", "bytes"},
 "failures": [{"source", "reason"}], "skipped": [{"source", "reason"}],
 "warnings": [{"source", "warning"}]}
```
Shard paths are relative to the folder (POSIX), so a prepared folder can be moved or copied.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.outdir import Fingerprint, OutputDir, UnitStats, write_json_atomic
from pipeline.worker import FAILED, PREPARED, SKIPPED, VideoOutcome


@dataclass(frozen=True)
class Totals:
    """Counts over a set of videos and shards."""

    videos: int = 0
    prepared: int = 0
    failed: int = 0
    skipped: int = 0
    clips: int = 0
    clips_with_text: int = 0
    footage_seconds: float = 0.0  # decoded duration of the prepared videos
    shards: int = 0
    bytes: int = 0

    @classmethod
    def of(cls, videos: list[VideoOutcome], shards: int, size: int) -> Totals:
        prepared = [video for video in videos if video.status == PREPARED]
        return cls(
            videos=len(videos),
            prepared=len(prepared),
            failed=sum(video.status == FAILED for video in videos),
            skipped=sum(video.status == SKIPPED for video in videos),
            clips=sum(video.clips for video in videos),
            clips_with_text=sum(video.clips_with_text for video in videos),
            footage_seconds=round(sum(video.footage_seconds for video in prepared), 3),
            shards=shards,
            bytes=size,
        )

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def build_manifest(fingerprint: Fingerprint, units: list[UnitStats]) -> dict[str, Any]:
    """The manifest of a folder whose done units are `units` (all of them, in unit order)."""
    videos = [video for unit in units for video in unit.videos]
    shards = [{**shard.to_dict(), "unit": unit.unit} for unit in units for shard in unit.shards]
    size = sum(int(shard["bytes"]) for shard in shards)
    return {
        **fingerprint.to_dict(),
        "created": utc_now(),
        "units": len(units),
        "shards": shards,
        "totals": Totals.of(videos, len(shards), size).to_dict(),
        "failures": [{"source": v.source, "reason": v.reason} for v in videos
                     if v.status == FAILED],
        "skipped": [{"source": v.source, "reason": v.reason} for v in videos
                    if v.status == SKIPPED],
        "warnings": [{"source": v.source, "warning": warning} for v in videos
                     for warning in v.warnings],
    }


def write_manifest(out: OutputDir, fingerprint: Fingerprint, units: list[UnitStats]) -> Path:
    """Write `manifest.json` for the done `units` and return its path."""
    write_json_atomic(out.manifest, build_manifest(fingerprint, units))
    return out.manifest
