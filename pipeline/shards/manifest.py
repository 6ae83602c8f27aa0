"""`OUT_DIR/manifest.json`: the table of contents of a finished prepared folder.

Written (atomically: temporary name, then rename) only once every unit of the plan is done,
by whichever `--part` finishes last, so its presence means the folder is complete. It is built
from the units' stats files alone, so any part can write it and rewriting it is idempotent
(only `created` changes). Readers (`pipeline.loader`, `omni inspect`) take the shard list,
the sample counts and the `PrepareConfig` from it:

```
{"schema_version": 1, "clip_encoding": "mp4",
 "config": {PrepareConfig fields, eval_fraction and split_seed among them},
 "created": "2025-01-31T12:00:00Z", "units": 3,
 "shards": [{"path": "shards/unit-000000-000000.tar", "samples": 812, "bytes": 51234816,
             "split": "train", "unit": 0},
            {"path": "shards/unit-000000-eval-000000.tar", ..., "split": "eval", "unit": 0},
            ...],
 "totals": {"videos", "prepared", "failed", "skipped", "clips", "clips_with_text",
            "footage_seconds", "shards", "bytes"},
 "splits": {"train": {same keys as totals}, "eval": {same keys as totals}},
 "failures": [{"source", "reason"}], "skipped": [{"source", "reason"}],
 "warnings": [{"source", "warning"}]}
```
Shard paths are relative to the folder (POSIX), so a prepared folder can be moved or copied.
A reader accepts nothing else: an entry must be ``shards/<name>.tar`` and resolve to a file
in the folder's ``shards/`` directory (`pipeline.shards.files.listed_shard_path`), since whoever
wrote the file would otherwise choose what a loader opens (``/etc/passwd``, ``../other.tar``)
or runs (webdataset opens ``pipe:cmd`` through a shell).
`totals` counts every video; `splits` counts each video in its split (`pipeline.shards.split`; a
failed or skipped video too, though it has no samples), so the two splits add up to `totals`.
A manifest written before splits existed has neither `split` nor `splits` nor `eval_fraction`:
it reads as all train (`eval_fraction` 0)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import SCHEMA_VERSION, PrepareConfig
from pipeline.errors import ConfigError
from pipeline.shards.files import ShardInfo, listed_shard_path
from pipeline.shards.outcome import FAILED, PREPARED, SKIPPED, VideoOutcome
from pipeline.shards.split import EVAL, SPLITS, TRAIN, Split, parse_split

MANIFEST_NAME = "manifest.json"


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
        return cls(videos=len(videos), prepared=len(prepared),
                   failed=sum(video.status == FAILED for video in videos),
                   skipped=sum(video.status == SKIPPED for video in videos),
                   clips=sum(video.clips for video in videos),
                   clips_with_text=sum(video.clips_with_text for video in videos),
                   footage_seconds=round(sum(video.footage_seconds for video in prepared), 3),
                   shards=shards, bytes=size)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def split_totals(videos: list[VideoOutcome], shards: list[ShardInfo]) -> dict[Split, Totals]:
    """`Totals` per split: each video counts in its split, each shard in the split it holds."""
    return {split: Totals.of([video for video in videos if video.split == split],
                             sum(shard.split == split for shard in shards),
                             sum(shard.bytes for shard in shards if shard.split == split))
            for split in SPLITS}


@dataclass(frozen=True)
class ManifestShard:
    path: str  # the shard's path: the folder joined with the manifest's relative path
    samples: int
    bytes: int
    split: Split = TRAIN


@dataclass(frozen=True)
class Manifest:
    """A parsed `manifest.json`; `read_manifest` is the one reader (loader, inspect, train)."""

    path: Path
    config: PrepareConfig
    clip_encoding: str | None
    created: str | None
    shards: list[ManifestShard]
    totals: dict[str, Any]
    splits: dict[Split, dict[str, Any]]  # per split, the same keys as `totals`
    failures: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)


def read_manifest(folder: Path) -> Manifest | None:
    """The manifest of a prepared folder, None when it has none (prepare unfinished), or a
    ConfigError naming what is wrong with it."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.get("schema_version")
        entries = [(entry["path"], int(entry["samples"]), int(entry["bytes"]),
                    parse_split(entry.get("split", TRAIN))) for entry in data["shards"]]
        totals = dict(data.get("totals", {}))
        # Written before splits existed: every video was trained on.
        splits = data.get("splits") or {TRAIN: totals, EVAL: Totals().to_dict()}
        parsed: dict[str, Any] = dict(
            config=PrepareConfig.from_dict({"eval_fraction": 0.0, **data["config"]}),
            clip_encoding=data.get("clip_encoding"), created=data.get("created"),
            totals=totals,
            splits={parse_split(name): dict(counts) for name, counts in splits.items()},
            failures=list(data.get("failures", [])), skipped=list(data.get("skipped", [])),
            warnings=list(data.get("warnings", [])))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"{path} is unreadable or malformed ({type(err).__name__}: {err}); "
                          f"re-run omni prepare on the same folders to rewrite it") from err
    if version != SCHEMA_VERSION:
        raise ConfigError(f"{path} describes shard schema v{version}; this version of omni "
                          f"reads v{SCHEMA_VERSION}: use a matching omni or re-run prepare")
    shards = [ManifestShard(listed_shard_path(folder, entry, path), samples, size, split)
              for entry, samples, size, split in entries]
    return Manifest(path=path, shards=shards, **parsed)
