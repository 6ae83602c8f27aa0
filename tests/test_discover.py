"""Video discovery: recursion, extensions, odd names, symlinks, ids, order."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.media.discover import VideoSource, discover_videos, video_id

SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")


def touch(root: Path, *rel_paths: str) -> None:
    for rel in rel_paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def rel_paths(root: Path) -> list[str]:
    return [source.rel_path for source in discover_videos(root)]


def test_recursive_mixed_case_and_non_videos_ignored(tmp_path: Path) -> None:
    touch(tmp_path, "b.MP4", "a/x.mkv", "a/deep/er/y.WebM", "a/z.Mov", "c/clip.ts",
          "c/old.MPEG", "c/v.ogv", "c/w.m4v", "c/x.flv", "c/y.avi", "c/z.mpg",
          "notes.txt", "a/x.srt", "a/thumb.jpg", "c/archive.mp4.zip", "README")
    assert rel_paths(tmp_path) == [
        "a/deep/er/y.WebM", "a/x.mkv", "a/z.Mov", "b.MP4", "c/clip.ts", "c/old.MPEG",
        "c/v.ogv", "c/w.m4v", "c/x.flv", "c/y.avi", "c/z.mpg",
    ]


def test_sources_carry_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touch(tmp_path, "dir/v.mp4")
    monkeypatch.chdir(tmp_path)
    [source] = discover_videos(Path("."))
    assert source == VideoSource(tmp_path / "dir" / "v.mp4", "dir/v.mp4", video_id("dir/v.mp4"))
    assert source.path.is_absolute() and source.path.is_file()


def test_spaces_and_non_ascii_names(tmp_path: Path) -> None:
    names = ["my lectures/intro video.mp4", "vidéos/été 2024.mkv", "日本語/動画.mp4",
             "vidéos/ete 2024.mkv"]
    touch(tmp_path, *names)
    sources = discover_videos(tmp_path)
    assert [s.rel_path for s in sources] == sorted(names)
    for source in sources:
        assert source.path.is_file()
    ids = [s.video_id for s in sources]
    assert len(set(ids)) == len(ids)
    assert video_id("my lectures/intro video.mp4").startswith("my-lectures_intro-video_")


def test_undecodable_file_name_bytes(tmp_path: Path) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.mp4")  # Latin-1 name on a UTF-8 system
    try:
        with open(raw, "wb"):
            pass
    except OSError:
        pytest.skip("filesystem refuses non-UTF-8 names")
    [source] = discover_videos(tmp_path)
    assert source.path.is_file()
    assert SAFE_ID.fullmatch(source.video_id)


def test_hidden_files_and_folders_skipped(tmp_path: Path) -> None:
    touch(tmp_path, ".hidden.mp4", ".cache/v.mp4", "ok/.partial.mp4", "ok/v.mp4")
    assert rel_paths(tmp_path) == ["ok/v.mp4"]


def test_symlink_cycle_terminates_and_lists_each_file_once(tmp_path: Path) -> None:
    touch(tmp_path, "a/v.mp4", "a/b/w.mp4")
    (tmp_path / "a" / "b" / "up").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "a" / "self").symlink_to(".", target_is_directory=True)
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)
    assert rel_paths(tmp_path) == ["a/b/w.mp4", "a/v.mp4"]


def test_symlinked_folders_are_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside, "x.mp4")
    root = tmp_path / "root"
    touch(root, "own.mkv", "sub/y.mp4")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "inner").symlink_to(root / "sub", target_is_directory=True)
    (root / "dangling.mp4").symlink_to(tmp_path / "missing.mp4")
    (root / "alias.mp4").symlink_to(root / "own.mkv")
    followed = [s.rel_path for s in discover_videos(root, follow_symlinks=True)]
    assert followed == ["alias.mp4", "inner/y.mp4", "linked/x.mp4", "own.mkv"]
    # Links that stay inside the input folder need no permission
    assert rel_paths(root) == ["alias.mp4", "inner/y.mp4", "own.mkv"]


def test_symlinks_out_of_the_input_folder_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside, "secret.mp4", "folder/x.mp4")
    root = tmp_path / "root"
    touch(root, "own.mp4")
    (root / "leak.mp4").symlink_to(outside / "secret.mp4")
    (root / "linked").symlink_to(outside / "folder", target_is_directory=True)
    (root / "up.mp4").symlink_to(Path("..") / "outside" / "secret.mp4")  # relative link
    assert rel_paths(root) == ["own.mp4"]
    listed = discover_videos(root, with_refused=True)
    assert [(s.rel_path, s.refused is None) for s in listed] == [
        ("leak.mp4", False), ("linked/x.mp4", False), ("own.mp4", True), ("up.mp4", False)]
    reason = listed[0].refused
    assert reason is not None and reason.startswith("leak.mp4 ")
    assert "--follow-symlinks" in reason and str(outside) not in reason


def test_a_source_knows_its_input_folder(tmp_path: Path) -> None:
    touch(tmp_path, "a/b/v.mp4", "w.mp4")
    assert [s.root for s in discover_videos(tmp_path)] == [tmp_path, tmp_path]


def test_order_is_by_relative_posix_path(tmp_path: Path) -> None:
    names = ["b/a.mp4", "a.mp4", "a b/c.mp4", "a/z.mp4", "B.mp4", "a/b/c.mp4", "a-b.mp4"]
    touch(tmp_path, *names)
    assert rel_paths(tmp_path) == sorted(names)
    assert rel_paths(tmp_path) == rel_paths(tmp_path)


def test_ids_are_safe_unique_and_deterministic(tmp_path: Path) -> None:
    names = ["a/b.mp4", "a_b.mp4", "a/b.mkv", "a.b.mp4", "a b.mp4", "ab.mp4", "x/y.z/v.1.mp4",
             "é.mp4", "è.mp4", "日本.mp4", "中文.mp4"]
    touch(tmp_path, *names)
    ids = [s.video_id for s in discover_videos(tmp_path)]
    assert len(set(ids)) == len(names)
    for vid in ids:
        assert SAFE_ID.fullmatch(vid), vid
        assert "." not in vid and "/" not in vid
    assert ids == [s.video_id for s in discover_videos(tmp_path)]
    assert video_id("lectures/intro video.mp4") == video_id("lectures/intro video.mp4")
    assert re.fullmatch(r"[0-9a-f]{16}", video_id("日本.mp4"))  # nothing left to slug
    assert len(video_id("x" * 300 + ".mp4")) <= 60 + 17


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_root_must_be_a_directory(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "videos"
    if kind == "file":
        root.write_bytes(b"")
    with pytest.raises(PipelineError, match="videos"):
        discover_videos(root)


def test_unlistable_folder_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touch(tmp_path, "ok/v.mp4", "locked/w.mp4")
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if os.path.basename(path) == "locked":  # what chmod 000 does, even when run as root
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(PipelineError, match="locked.*Permission denied"):
        discover_videos(tmp_path)


def test_empty_folder_gives_no_videos(tmp_path: Path) -> None:
    assert discover_videos(tmp_path) == []
