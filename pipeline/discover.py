"""Find the videos under a folder, in a deterministic order, each with a shard-safe id.

The order (sorted relative POSIX paths) defines the work units, so it must not depend on the
filesystem's listing order; the id names every sample of the video in the shards.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.errors import PipelineError

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".ogv"}
)

# Characters kept in an id's readable part; everything else becomes "-".
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_SLUG = 60
_HASH_BYTES = 8  # 64 bits: no collision expected below billions of videos


@dataclass(frozen=True)
class VideoSource:
    """One video: where it is, its path relative to the input root, and its shard key prefix."""

    path: Path
    rel_path: str
    video_id: str


def video_id(rel_path: str) -> str:
    """A webdataset-safe key for the video at `rel_path` (POSIX, relative to the input root).

    Format `<slug>_<16 hex>`, e.g. "lectures_intro-video_3f2a9c1b04d5e6f7". The slug is the path
    without its extension, folders joined by "_", other runs of characters outside
    [A-Za-z0-9_-] (spaces, dots, non-ASCII) turned into "-", and cut to its last 60 characters;
    it is for people reading shard listings. The hash of the full relative path makes the id
    unique and deterministic. No "." (webdataset splits keys at the first dot) and no "/".
    Names that slug away entirely (e.g. all non-ASCII) get the hash alone.
    """
    pure = PurePosixPath(rel_path)
    parts = [*pure.parent.parts, pure.stem]  # "a.mp4" has no parent parts
    slug = "_".join(_UNSAFE.sub("-", part).strip("-") for part in parts)
    slug = slug[-_MAX_SLUG:].strip("-_")
    # surrogateescape: undecodable bytes in a file name still hash to their own value
    digest = hashlib.blake2b(rel_path.encode("utf-8", "surrogateescape"),
                             digest_size=_HASH_BYTES).hexdigest()
    return f"{slug}_{digest}" if slug else digest


def _raise_walk_error(err: OSError) -> None:
    raise PipelineError(
        f"cannot list {err.filename}: {err.strerror}; fix its permissions or move it out of "
        f"the input folder"
    ) from err


def discover_videos(root: Path) -> list[VideoSource]:
    """All videos under `root`, recursively, sorted by relative POSIX path.

    A file is a video by its extension (`VIDEO_EXTENSIONS`, any case). Names starting with "."
    (hidden files and folders) are skipped. Symlinked folders are followed, but a folder is
    listed once, at the first path the walk reaches it by, so symlink cycles terminate. Raises
    PipelineError if `root` is not a directory or a folder under it cannot be listed.
    """
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise PipelineError(f"input folder {root} {what}; pass a folder of videos")
    root = root.absolute()
    seen: set[str] = set()
    found: list[VideoSource] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True,
                                                onerror=_raise_walk_error):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = Path(dirpath, name)
            if (name.startswith(".") or path.suffix.lower() not in VIDEO_EXTENSIONS
                    or not path.is_file()):
                continue
            rel_path = path.relative_to(root).as_posix()
            found.append(VideoSource(path, rel_path, video_id(rel_path)))
    found.sort(key=lambda source: source.rel_path)
    return found
