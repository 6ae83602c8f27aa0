"""`omni prepare` against hostile inputs: symlinks out of the input folder, a FIFO sidecar,
a sparse 1 GB subtitle file, a 100 kB cue, too many cues, a patched container duration, and
output folders it must not write into. One module-scoped run prepares the corpus; the hostile
files are made in the test's temporary folders (sparse files cost no disk)."""

from __future__ import annotations

import json
import os
import struct
import tarfile
import time
from pathlib import Path

import pytest
from media import make_oversized_video, make_video, read_samples
from typer.testing import CliRunner

from cli.app import app
from pipeline.config import DECODERS, PrepareConfig
from pipeline.errors import PipelineError
from pipeline.lock import LOCK_NAME, FolderInUseError, FolderLock
from pipeline.media.discover import discover_videos
from pipeline.media.subtitles import MAX_CUES
from pipeline.media.transcripts import MAX_WINDOW_TEXT_BYTES
from pipeline.prepare.outdir import Fingerprint, OutputDir
from pipeline.prepare.plan import Part
from pipeline.prepare.run import (
    FolderArgumentError,
    PrepareResult,
    RunOptions,
    decoder_threads,
    prepare,
)
from pipeline.prepare.video_job import VideoTask, memory_limit, prepare_video
from pipeline.prepare.worker import MAX_STATED_S, MIN_BYTES_PER_SECOND, VideoRunner, time_limit

CONFIG = PrepareConfig(videos_per_unit=4, samples_per_shard=50)
SMALL = (64, 48)
SECRET = "root:$6$not-for-the-shards"
LONG_CUE = "word " * 20_000  # 100 kB in one cue


def srt(text: str, start: str = "00:00:00,000", end: str = "00:00:03,000") -> str:
    return f"1\n{start} --> {end}\n{text}\n"


def many_cues(count: int) -> str:
    return "".join(f"{i + 1}\n00:00:00,{i % 1000:03d} --> 00:00:01,000\nw{i}\n\n"
                   for i in range(count))


def texts_by_source(out: Path) -> dict[str, list[bytes]]:
    """The txt members of every sample under out/shards, per source video, in clip order."""
    found: dict[str, list[tuple[int, bytes]]] = {}
    for sample in read_samples(out).values():
        meta = json.loads(sample["json"])
        found.setdefault(meta["source"], []).append((meta["clip_index"], sample["txt"]))
    return {source: [text for _, text in sorted(items)] for source, items in found.items()}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(input folder, a folder outside it holding what the input's symlinks point at)."""
    base = tmp_path_factory.mktemp("hostile")
    root, outside = base / "in", base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "shadow").write_text(SECRET + "\n", encoding="utf-8")
    make_video(outside / "elsewhere.mp4", duration=3.0, size=SMALL)
    (outside / "folder").mkdir()
    make_video(outside / "folder" / "x.mp4", duration=3.0, size=SMALL)
    (root / "leak.mp4").symlink_to(outside / "elsewhere.mp4")
    (root / "linked").symlink_to(outside / "folder", target_is_directory=True)
    make_video(root / "secret.mp4", duration=3.0, size=SMALL)
    (root / "secret.txt").symlink_to(outside / "shadow")
    make_video(root / "fifo.mp4", duration=3.0, size=SMALL)
    os.mkfifo(root / "fifo.srt")
    make_video(root / "sparse.mp4", duration=3.0, size=SMALL)
    with open(root / "sparse.srt", "wb") as handle:
        handle.truncate(1 << 30)  # 1 GB of zeros, no disk
    make_video(root / "long.mp4", duration=3.0, size=SMALL)
    (root / "long.srt").write_text(srt(LONG_CUE), encoding="utf-8")
    make_video(root / "many.mp4", duration=3.0, size=SMALL)
    (root / "many.srt").write_text(many_cues(MAX_CUES + 1), encoding="utf-8")
    (root / "sub").mkdir()
    make_video(root / "sub" / "broken.mp4", duration=3.0, size=SMALL)
    (root / "sub" / "broken.srt").write_bytes(b"not\x00 subtitles")
    return root, outside


@pytest.fixture(scope="module")
def prepared(hostile, tmp_path_factory) -> tuple[PrepareResult, dict[str, list[bytes]]]:
    root, _ = hostile
    out = tmp_path_factory.mktemp("hostile_out") / "out"
    result = prepare(root, out, CONFIG, RunOptions(workers=2))
    return result, texts_by_source(out)


def outcome(result: PrepareResult, source: str):  # type: ignore[no-untyped-def]
    (video,) = [video for video in result.videos if video.source == source]
    return video


# --------------------------------------------------------------------------- symlinks
def test_videos_a_symlink_leads_out_of_the_input_to_are_skipped(prepared) -> None:
    result, texts = prepared
    for source in ("leak.mp4", "linked/x.mp4"):
        video = outcome(result, source)
        assert video.status == "skipped" and video.clips == 0, source
        assert video.reason.startswith(f"{source} leads out of the input folder")
        assert "--follow-symlinks" in video.reason
        assert source not in texts
    assert result.manifest is not None
    manifest = json.loads(result.manifest.read_text())
    assert {item["source"] for item in manifest["skipped"]} == {"leak.mp4", "linked/x.mp4"}


def test_a_sidecar_symlink_out_of_the_input_is_not_read(prepared, hostile) -> None:
    result, texts = prepared
    _, outside = hostile
    video = outcome(result, "secret.mp4")
    assert video.status == "prepared" and video.transcript_source == "none"
    assert video.transcript_error.startswith("secret.txt leads out of the input folder")
    assert "--follow-symlinks" in video.transcript_error
    assert str(outside) not in video.transcript_error
    assert any("transcript ignored: secret.txt" in warning for warning in video.warnings)
    assert texts["secret.mp4"] and all(SECRET.encode() not in text
                                       for text in texts["secret.mp4"])


def test_folders_prepared_before_the_option_resume_and_changing_it_is_refused() -> None:
    ours = Fingerprint(PrepareConfig(), "mp4").to_dict()
    del ours["config"]["follow_symlinks"]  # a stats file written before the option existed
    assert Fingerprint(PrepareConfig(), "mp4").differences(ours) == []
    assert Fingerprint(PrepareConfig(follow_symlinks=True), "mp4").differences(ours) == [
        "follow_symlinks: False -> True"]


def test_follow_symlinks_reads_what_the_links_lead_to(hostile, tmp_path) -> None:
    root, _ = hostile
    config = PrepareConfig(follow_symlinks=True)
    sources = {s.rel_path: s for s in discover_videos(root, follow_symlinks=True)}
    assert sources["leak.mp4"].refused is None
    part = tmp_path / "secret.tar"
    video = prepare_video(VideoTask(sources["secret.mp4"], part, config), lambda message: None)
    assert video.status == "prepared" and video.transcript_source == "txt"
    with tarfile.open(part) as tar:
        text = b"".join(tar.extractfile(m).read() for m in tar if m.name.endswith(".txt"))
    assert SECRET.encode() in text


# --------------------------------------------------------------------------- sidecar bounds
def test_a_fifo_sidecar_neither_blocks_nor_counts(prepared) -> None:
    result, texts = prepared
    video = outcome(result, "fifo.mp4")
    assert video.status == "prepared" and video.transcript_source == "none"
    assert texts["fifo.mp4"] == [b"", b""]


def test_a_sparse_1gb_sidecar_is_not_read(prepared) -> None:
    result, texts = prepared
    video = outcome(result, "sparse.mp4")
    assert video.status == "prepared" and video.transcript_source == "none"
    assert "sparse.srt is 1073.7 MB, over the 20 MB" in video.transcript_error
    assert any("transcript ignored: sparse.srt" in warning for warning in video.warnings)
    assert texts["sparse.mp4"] == [b"", b""]


def test_one_huge_cue_is_cut_to_the_window_limit(prepared) -> None:
    result, texts = prepared
    video = outcome(result, "long.mp4")
    assert video.status == "prepared" and video.transcript_source == "srt"
    assert texts["long.mp4"] and all(
        text == LONG_CUE.strip().encode()[:MAX_WINDOW_TEXT_BYTES].strip()
        for text in texts["long.mp4"])
    assert [w for w in video.warnings if f"cut to {MAX_WINDOW_TEXT_BYTES} bytes" in w] == [
        f"transcript: the text of 2 clip(s) was cut to {MAX_WINDOW_TEXT_BYTES} bytes (a "
        f"clip's text may not be longer)"]


def test_too_many_cues_drop_the_text_not_the_video(prepared) -> None:
    result, texts = prepared
    video = outcome(result, "many.mp4")
    assert video.status == "prepared" and video.transcript_source == "none"
    assert video.transcript_error == (f"many.srt: {MAX_CUES + 1} cues, over the {MAX_CUES} a "
                                      f"transcript may have; its text is dropped")
    assert texts["many.mp4"] == [b"", b""]


def test_transcript_messages_name_files_relative_to_the_input(prepared, hostile) -> None:
    result, _ = prepared
    root, _ = hostile
    video = outcome(result, "sub/broken.mp4")
    assert video.transcript_error.startswith("sub/broken.srt: contains NUL characters")
    for item in result.videos:
        for text in [*item.warnings, item.transcript_error or "", item.reason or ""]:
            assert str(root) not in text, (item.source, text)


# --------------------------------------------------------------------------- time limit
def test_a_stated_duration_counts_only_as_far_as_the_file_size_allows() -> None:
    # A 1 MB file claiming 10 hours: believed up to 1 MB at MIN_BYTES_PER_SECOND.
    credible = 1_000_000 / MIN_BYTES_PER_SECOND
    assert time_limit(36_000.0, 0.0, 1_000_000, 10.0, 60.0) == 10.0 * credible
    # A file big enough for any duration is still believed only up to MAX_STATED_S.
    assert time_limit(1e9, 0.0, 10**15, 10.0, 60.0) == 10.0 * MAX_STATED_S
    # An honest duration within both bounds counts in full; footage decoded always does.
    assert time_limit(120.0, 0.0, 50_000_000, 10.0, 60.0) == 1200.0
    assert time_limit(None, 50_000.0, 1000, 10.0, 60.0) == 500_000.0
    assert time_limit(36_000.0, 0.0, 0, 10.0, 60.0) == 60.0


def patch_mkv_duration(path: Path, seconds: float) -> None:
    """Overwrite the Segment Info Duration (EBML id 0x4489, milliseconds) of a Matroska."""
    data = bytearray(path.read_bytes())
    at = data.index(b"\x44\x89")
    size = data[at + 2] & 0x7F
    assert size in (4, 8)
    data[at + 3:at + 3 + size] = struct.pack(">d" if size == 8 else ">f", seconds * 1000.0)
    path.write_bytes(bytes(data))


def test_a_hung_worker_is_not_kept_for_a_patched_duration(tmp_path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    make_video(folder / "fault_hang_claims_ten_hours.mkv", duration=2.0, size=SMALL)
    patch_mkv_duration(folder / "fault_hang_claims_ten_hours.mkv", 36_000.0)
    (source,) = discover_videos(folder)
    task = VideoTask(source, tmp_path / "part.tar", CONFIG)  # hangs: tests/faults.py
    finished = []
    with VideoRunner(1, timeout_factor=1.0, timeout_min_s=2.0) as runner:
        runner.start(task)
        deadline = time.monotonic() + 60  # the stated duration alone would allow 10 hours
        while not finished and time.monotonic() < deadline:
            finished = runner.wait(0.5)
    assert [video.reason for video in finished] == ["timed out after 2 s"]


# --------------------------------------------------------------------------- memory
@pytest.mark.parametrize("decoder", DECODERS)
def test_huge_frames_and_a_memory_hog_fail_alone_and_are_counted(tmp_path, monkeypatch,
                                                                 decoder: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    make_video(folder / "fine.mp4", duration=2.0, size=SMALL)
    make_video(folder / "fault_memory_hog.mp4", duration=2.0, size=SMALL)
    for suffix in (".mpg", ".mkv", ".ts"):
        make_oversized_video(folder / f"huge{suffix}")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prepare", str(folder), str(out), "--decoder", decoder,
                                      "--workers", "2", "--strict", "--json"])
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    reasons = {video["source"]: (video["status"], video["reason"])
               for video in document["videos"]}
    assert reasons["fine.mp4"] == ("prepared", None)
    assert reasons["huge.mpg"] == ("failed", "a 16000x16000 yuv420p frame takes 384 MB decoded, "
                                   "more than the 200 MB a frame may take (8K at up to 48 bits "
                                   "per pixel fits); not decoded")
    assert reasons["huge.mkv"][1].startswith("a 16000x16000 frame of unknown pixel format")
    assert reasons["huge.ts"][1].startswith("the video stream states no picture size")
    # The limit that goes with the decoder threads of each of two workers on these CPUs.
    limit = memory_limit(decoder_threads(2)) / 2**30
    assert reasons["fault_memory_hog.mp4"][0] == "failed"
    assert reasons["fault_memory_hog.mp4"][1].startswith(
        f"out of memory (a prepare worker may reserve {limit:.2f} GiB): MemoryError")
    assert document["totals"]["failed"] == 4 and document["totals"]["prepared"] == 1
    _, stats = OutputDir(out).read_stats(0)
    assert stats is not None
    assert sorted(video.source for video in stats.videos if video.status == "failed") == [
        "fault_memory_hog.mp4", "huge.mkv", "huge.mpg", "huge.ts"]


# --------------------------------------------------------------------------- output folder
def test_a_run_holding_the_folder_stops_a_second_one(hostile, tmp_path) -> None:
    root, _ = hostile
    out = tmp_path / "out"
    with FolderLock(out), pytest.raises(FolderInUseError,
                                        match=rf"another run \(pid {os.getpid()}\) is using"):
        prepare(root, out, CONFIG, RunOptions(workers=1))
    assert not list((out / "stats").iterdir())
    # The parts of a job array share the folder and each lock their own part: a part stops a
    # second run of the same part and a whole run, and the other parts run beside it.
    with FolderLock(out, shared=True), FolderLock(OutputDir(out).lock_folder(Part(1, 2))):
        with pytest.raises(FolderInUseError):
            prepare(root, out, CONFIG, RunOptions(workers=2, part=Part(1, 2)))
        with pytest.raises(FolderInUseError):
            prepare(root, out, CONFIG, RunOptions(workers=2))
        second = prepare(root, out, CONFIG, RunOptions(workers=2, part=Part(2, 2)))
    assert second.plan.units_todo == 1 and second.units_missing == 1
    with FolderLock(out), pytest.raises(FolderInUseError):  # a whole run keeps the parts out
        prepare(root, out, CONFIG, RunOptions(workers=2, part=Part(2, 2)))


def test_only_new_empty_or_prepared_output_folders_are_used(hostile, tmp_path) -> None:
    root, _ = hostile
    mine = tmp_path / "repository"
    mine.mkdir()
    for name in ("README.md", "a.py", "b.py", "c.py"):
        (mine / name).write_text("mine")
    with pytest.raises(FolderArgumentError, match=r"holds other things \(README\.md, a\.py, "
                                                  r"b\.py and 1 more\)"):
        prepare(root, mine, CONFIG)
    assert sorted(path.name for path in mine.iterdir()) == ["README.md", "a.py", "b.py", "c.py"]
    assert OutputDir(mine).unrelated_entries() == ["README.md", "a.py", "b.py", "c.py"]
    (mine / "stats").mkdir()  # a prepared folder may hold other files
    assert OutputDir(mine).unrelated_entries() == []
    locked_only = tmp_path / "locked"
    locked_only.mkdir()
    (locked_only / LOCK_NAME).write_text("123\n")  # left by a run killed before its first unit
    assert OutputDir(locked_only).unrelated_entries() == []
    assert OutputDir(tmp_path / "missing").unrelated_entries() == []


def test_a_missing_input_folder_is_a_bad_argument(tmp_path) -> None:
    with pytest.raises(FolderArgumentError, match="does not exist"):
        prepare(tmp_path / "nope", tmp_path / "out", CONFIG)
    assert isinstance(FolderArgumentError("x"), PipelineError)


def test_a_stats_file_naming_a_shard_outside_the_folder_makes_its_unit_redone(tmp_path) -> None:
    """A stats file is trusted only for its own shards: one that names another file (of the
    right size, even) does not mark its unit done, so the rerun rewrites it."""
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "a.mp4", duration=3.0, size=SMALL)
    out = tmp_path / "out"
    prepare(videos, out, CONFIG, RunOptions(workers=1))
    (stats_path,) = (out / "stats").glob("*.json")
    stats = json.loads(stats_path.read_text())
    shard = out / stats["shards"][0]["path"]
    outside = tmp_path / "outside.tar"
    outside.write_bytes(shard.read_bytes())
    stats["shards"][0]["path"] = "../outside.tar"
    stats_path.write_text(json.dumps(stats))
    again = prepare(videos, out, CONFIG, RunOptions(workers=1))
    assert again.plan.units_todo == 1
    assert json.loads(stats_path.read_text())["shards"][0]["path"].startswith("shards/")
