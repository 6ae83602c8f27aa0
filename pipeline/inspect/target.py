"""What PATH names for `omni inspect`: a prepared folder, shard files or brace patterns, and
what was recorded about those shards (the manifest or, without one, the finished units' stats
files), so that the summary and verify can compare what they find with it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import PrepareConfig
from pipeline.errors import ConfigError
from pipeline.prepare.outdir import OutputDir
from pipeline.shards.files import listed_shard_path, shard_split
from pipeline.shards.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestShard,
    Totals,
    read_manifest,
    split_totals,
)
from pipeline.shards.outcome import FAILED, SKIPPED
from pipeline.shards.schema import expected_from_config
from pipeline.shards.shardset import SHARD_GLOB, URL_SCHEME, resolve_shards, shards_on_disk
from pipeline.shards.split import Split


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
    finished units' stats files)."""

    path: str
    kind: str  # "directory", "shard" or "shards"
    shards: list[str]
    manifest: str | None = None
    created: str | None = None
    config: dict[str, Any] | None = None  # PrepareConfig fields
    clip_encoding: str | None = None
    expected: dict[str, ManifestShard] = field(default_factory=dict)
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

    Raises PipelineError (ConfigError) with what to do when nothing usable is found."""
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
                          f"a .tar shard or a brace pattern (unit-{{000000..000009}}-000000.tar)")
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
    issues = [VideoIssue(str(item["source"]), status, str(item[key]))
              for status, key, items in ((FAILED, "reason", manifest.failures),
                                         (SKIPPED, "reason", manifest.skipped),
                                         ("warning", "warning", manifest.warnings))
              for item in items]
    target = Target(
        path=str(folder), kind="directory", shards=[shard.path for shard in manifest.shards],
        manifest=str(manifest.path), created=manifest.created,
        config=manifest.config.to_dict(), clip_encoding=manifest.clip_encoding,
        expected={shard.path: shard for shard in manifest.shards},
        totals=manifest.totals, splits=manifest.splits, issues=issues)
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
        for info in stats.shards:
            path = listed_shard_path(folder, info.path, out.stats_path(unit))
            target.expected[path] = ManifestShard(path, info.samples, info.bytes, info.split)
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
