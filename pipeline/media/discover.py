"""Find the videos under a folder, in a deterministic order, each with a shard-safe id.

The order (sorted relative POSIX paths) defines the work units, so it must not depend on the
filesystem's listing order; the id names every sample of the video in the shards.

A symlink may lead anywhere, and prepare copies what it reads into shards that get shared:
a file reached through a symlink that leaves the input folder is refused unless the caller
asks to follow symlinks (`omni prepare --follow-symlinks`), so a link planted in a downloaded
corpus cannot pull in a private file."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.errors import PipelineError

VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg",
                              ".ts", ".flv", ".ogv"})

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
    # Why it must not be read (a symlink out of the input folder); prepare reports it skipped.
    refused: str | None = None

    @property
    def root(self) -> Path:
        """The input folder: `path` without the folders and name of `rel_path`."""
        return self.path.parents[len(PurePosixPath(self.rel_path).parts) - 1]


def video_id(rel_path: str) -> str:
    """A webdataset-safe key for the video at `rel_path` (POSIX, relative to the input root).

    Format `<slug>_<16 hex>`, e.g. "lectures_intro-video_3f2a9c1b04d5e6f7". The slug is the path
    without its extension, folders joined by "_", other runs of characters outside
    [A-Za-z0-9_-] (spaces, dots, non-ASCII) turned into "-", and cut to its last 60 characters;
    it is for people reading shard listings. The hash of the full relative path makes the id
    unique and deterministic. No "." (webdataset splits keys at the first dot) and no "/".
    Names that slug away entirely (e.g. all non-ASCII) get the hash alone."""
    pure = PurePosixPath(rel_path)
    parts = [*pure.parent.parts, pure.stem]  # "a.mp4" has no parent parts
    slug = "_".join(_UNSAFE.sub("-", part).strip("-") for part in parts)
    slug = slug[-_MAX_SLUG:].strip("-_")
    # surrogateescape: undecodable bytes in a file name still hash to their own value
    digest = hashlib.blake2b(rel_path.encode("utf-8", "surrogateescape"),
                             digest_size=_HASH_BYTES).hexdigest()
    return f"{slug}_{digest}" if slug else digest


def _raise_walk_error(err: OSError) -> None:
    raise PipelineError(f"cannot list {err.filename}: {err.strerror}; fix its permissions or "
                        f"move it out of the input folder") from err


def leaves_folder(path: Path, root: Path) -> bool:
    """Whether `path`, symlinks resolved, lies outside `root` (symlinks resolved too)."""
    real = Path(os.path.realpath(path))
    return not real.is_relative_to(os.path.realpath(root))


def refusal(rel_path: str) -> str:
    """Why a file reached through a symlink out of the input folder is not read."""
    return (f"{rel_path} leads out of the input folder through a symlink; not read (pass "
            f"--follow-symlinks to read files that symlinks lead to)")


def discover_videos(root: Path, follow_symlinks: bool = False, *,
                    with_refused: bool = False) -> list[VideoSource]:
    """All videos under `root`, recursively, sorted by relative POSIX path.

    A file is a video by its extension (`VIDEO_EXTENSIONS`, any case). Names starting with "."
    (hidden files and folders) are skipped. Symlinked folders are walked, but a folder is
    listed once, at the first path the walk reaches it by, so symlink cycles terminate. A
    video whose real path lies outside `root` (a symlink, or a symlinked folder, leading out)
    is left out unless `follow_symlinks`; `with_refused` lists it anyway, with `refused` set,
    so that prepare can report it. Raises PipelineError if `root` is not a directory or a
    folder under it cannot be listed."""
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise PipelineError(f"input folder {root} {what}; pass a folder of videos")
    root = root.absolute()
    real_root = os.path.realpath(root)
    seen: set[str] = set()
    found: list[VideoSource] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=_raise_walk_error):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        outside = not Path(real).is_relative_to(real_root)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = Path(dirpath, name)
            if (name.startswith(".") or path.suffix.lower() not in VIDEO_EXTENSIONS
                    or not path.is_file()):
                continue
            rel_path = path.relative_to(root).as_posix()
            # Only a folder or a file that is a symlink can lead out: resolve no other.
            leaves = outside or (path.is_symlink() and leaves_folder(path, root))
            refused = refusal(rel_path) if leaves and not follow_symlinks else None
            if refused is None or with_refused:
                found.append(VideoSource(path, rel_path, video_id(rel_path), refused))
    found.sort(key=lambda source: source.rel_path)
    return found
