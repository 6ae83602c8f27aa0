"""Which shards a path names: a prepared folder (its manifest), tar files, brace patterns, URLs;
of a prepared folder, optionally one split (train or eval, see `pipeline.shards.split`).

Shared by the streaming loader and `omni inspect`. It imports neither torch nor webdataset
(webdataset's package imports torch, which takes seconds), so `omni inspect` starts at once;
the two small rules it needs from webdataset are restated here and tested to agree with it:
brace expansion of ``::``-separated patterns (webdataset's `expand_urls`, less its ``WDS_``
environment substitution) and the split of a member name into sample key and type
(`base_plus_ext`).

Only what a person names on the command line is ever opened as a URL (webdataset's gopen runs
``pipe:cmd`` through a shell): the shards of a prepared folder, from its manifest or found on
disk, are local files inside it (`pipeline.shards.files.listed_shard_path`), opened as files."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from braceexpand import UnbalancedBracesError, braceexpand

from pipeline.config import PrepareConfig
from pipeline.errors import ConfigError
from pipeline.shards.files import inside_shard_dir, shard_split
from pipeline.shards.manifest import MANIFEST_NAME, read_manifest
from pipeline.shards.schema import expected_from_config
from pipeline.shards.split import EVAL, SPLITS, Split

SHARD_GLOB = "shards/*.tar"
# "pipe:", "http://", "s3://", "file:" ... but not a Windows drive letter ("C:").
URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")
# A member "dir/key.type.more" -> ("dir/key", "type.more"): the key ends at the first dot
# after the last slash, as in webdataset.
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def split_member_name(name: str) -> tuple[str, str] | tuple[None, None]:
    """(sample key, member type) of a tar member name, or (None, None) if it has no type."""
    match = _MEMBER_NAME.match(name)
    return (match.group(1), match.group(2)) if match else (None, None)


def expand_urls(text: str) -> list[str]:
    """Shard URLs from ``a-{000..009}.tar::b-{0..3}.tar``: split at ``::``, expand braces."""
    try:
        return [url for pattern in text.split("::") for url in braceexpand(pattern)]
    except UnbalancedBracesError as err:
        raise ConfigError(f"{text!r} is not a shard pattern ({err}); write ranges as "
                          f"unit-{{000000..000003}}-000000.tar") from None


@dataclass(frozen=True)
class ShardSet:
    """Resolved input: the shard URLs, their manifest sample counts and expected sizes.

    Every url is a local file, opened as one, except those in `streamed`: URLs the caller
    passed as such (``pipe:``, ``http(s)://`` ...), which only webdataset's gopen can open."""

    urls: tuple[str, ...]
    sample_counts: dict[str, int]  # url -> samples, for shards listed in a manifest
    expected: dict[str, Any] | None  # expected_from_config of the manifest's config
    streamed: frozenset[str] = frozenset()


def resolve_shards(urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                   split: Split | None = None) -> ShardSet:
    """Expand the loader's `urls` argument into a list of shard URLs.

    Each item is a directory written by ``omni prepare`` (its ``manifest.json``, or
    ``shards/*.tar`` if it has none; either way only files that, links followed, lie in its
    ``shards/``), a local tar path or brace pattern
    (``out/shards/unit-{000000..000003}-000000.tar``), or a URL webdataset's gopen can open
    (``pipe:...``, ``http(s)://...``), passed on unchecked: the caller named it. Local shards
    must exist.

    `split` ("train" or "eval"; None: both) keeps only that split's shards of a directory, as
    its manifest records them (without a manifest, as their file names say:
    ``unit-NNNNNN-eval-SSSSSS.tar``). Tar paths, patterns and URLs are taken as given: whoever
    named them chose them. Raises ConfigError when nothing is found, a directory holds none of
    the requested split, or two manifests disagree on the sample format."""
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)} or None (both), "
                          f"got {split!r}")
    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    found: list[str] = []
    streamed: set[str] = set()
    counts: dict[str, int] = {}
    expected: dict[str, Any] | None = None
    for item in items:
        text = os.fspath(item)
        if URL_SCHEME.match(text):
            named = expand_urls(text)
            found += named
            streamed.update(named)
        elif Path(text).is_dir():
            shard_urls, shard_counts, config = _resolve_directory(Path(text), split)
            found += shard_urls
            counts.update(shard_counts)
            if config is not None:
                wanted = expected_from_config(config)
                if expected is not None and wanted != expected:
                    raise ConfigError(f"{text} was prepared with other sizes than the shards "
                                      f"before it ({wanted} vs {expected}); load them apart")
                expected = wanted
        else:
            for url in expand_urls(text):
                if not Path(url).is_file():
                    raise ConfigError(f"shard {url} does not exist; check the path or pattern")
                found.append(url)
    if not found:
        raise ConfigError(f"no shards in {urls!r}; pass a folder written by omni prepare, a "
                          f"tar file or a pattern like "
                          f"out/shards/unit-{{000000..000003}}-000000.tar")
    return ShardSet(tuple(found), counts, expected, frozenset(streamed))


def shards_on_disk(folder: Path) -> list[Path]:
    """The ``shards/*.tar`` files of a prepared folder, sorted; a ConfigError for a link that
    leads outside its ``shards/`` (a folder's shards are its own files)."""
    paths = sorted(folder.glob(SHARD_GLOB))
    for path in paths:
        if not inside_shard_dir(folder, path):
            raise ConfigError(f"{path} is a link that leads outside {path.parent}; copy the "
                              f"shard itself into the folder")
    return paths


def _resolve_directory(folder: Path, split: Split | None
                       ) -> tuple[list[str], dict[str, int], PrepareConfig | None]:
    manifest = read_manifest(folder)
    if manifest is None:
        paths = shards_on_disk(folder)
        if not paths:
            raise ConfigError(f"{folder} holds neither {MANIFEST_NAME} nor {SHARD_GLOB}; run "
                              f"omni prepare into it first")
        chosen = [str(path) for path in paths if split in (None, shard_split(path.name))]
        if not chosen:
            raise _no_split(folder, split, None)
        return chosen, {}, None
    shards = [shard for shard in manifest.shards if split in (None, shard.split)]
    if manifest.shards and not shards:
        raise _no_split(folder, split, manifest.config)
    for shard in shards:
        if not Path(shard.path).is_file():
            raise ConfigError(f"{manifest.path} lists {shard.path}, which does not exist; copy "
                              f"the whole prepared folder")
    return ([shard.path for shard in shards],
            {shard.path: shard.samples for shard in shards}, manifest.config)


def _no_split(folder: Path, split: Split | None, config: PrepareConfig | None) -> ConfigError:
    """The error for a folder whose shards all belong to the other split, with what to do."""
    if split != EVAL:
        why = ("every video with samples fell into the eval split; prepare with a smaller "
               "--eval-fraction")
    elif config is not None and config.eval_fraction > 0:
        why = (f"none of its videos with samples fell into it at --eval-fraction "
               f"{config.eval_fraction:g}; prepare with a larger --eval-fraction (or more videos)")
    else:
        why = "prepare with --eval-fraction > 0"
    return ConfigError(f"{folder} holds no {split} split: {why}")
