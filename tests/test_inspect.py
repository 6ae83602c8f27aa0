"""`omni inspect`: summary numbers, samples, verify (good and broken sets), export, JSON, paths.

The shards are built here with webdataset's TarWriter and `encode.encode_sample`, laid out as
`omni prepare` lays them out (shards/unit-NNNNNN-SSSSSS.tar, stats files, a manifest from
`pipeline.shards.manifest`), with a tiny config so that a whole set takes milliseconds to write.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webdataset as wds
from media import make_video
from PIL import Image
from typer.testing import CliRunner

from cli.app import app
from pipeline.config import PrepareConfig
from pipeline.errors import ConfigError
from pipeline.inspect.export import colormap, contact_sheet, export_samples, list_samples, mel_image
from pipeline.inspect.summary import summarize
from pipeline.inspect.target import open_target
from pipeline.inspect.verify import verify
from pipeline.media.discover import video_id
from pipeline.prepare.outdir import Fingerprint, OutputDir, UnitStats, write_manifest
from pipeline.shards.decode import MAX_TEXT_BYTES
from pipeline.shards.encode import encode_clip, encode_sample
from pipeline.shards.files import ShardInfo, shard_name
from pipeline.shards.outcome import FAILED, PREPARED, VideoOutcome
from pipeline.shards.schema import SampleMeta

runner = CliRunner()
ENV = {"COLUMNS": "200"}
# 16 frames of 32 px per 1 s clip, a new clip every 0.5 s; 3 samples per shard.
SMALL = PrepareConfig(clip_duration=1.0, clip_stride=0.5, fps=16, video_size=32,
                      image_size=48, n_mels=16, samples_per_shard=3, videos_per_unit=2)
# (source, transcript source, has_audio, texts of its clips, recorded footage seconds)
VIDEOS = [
    ("videos/a.mp4", "srt", True, ["", "hello", "hello world", "world"], 2.6),
    ("videos/b.mp4", "none", False, ["", "", ""], 2.0),
]
Edit = Callable[[str, int, dict[str, Any]], None]  # (source, clip index, members) -> None


class Payload:
    """Unpickling this would create the file `path`: proof that a member was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def members_of(source: str, transcript: str, has_audio: bool, index: int,
               text: str) -> dict[str, Any]:
    vid = video_id(source)
    meta = SampleMeta.build(SMALL, source=source, video_id=vid, clip_index=index,
                            start=0.5 * index, end=0.5 * index + 1.0, rotation=0,
                            has_audio=has_audio, transcript_source=transcript,
                            transcript_timed=True)
    rng = np.random.default_rng(index)
    mel = rng.uniform(-13.8, 8.8, (SMALL.n_mels, SMALL.audio_frames)).astype(np.float16)
    image = np.full((SMALL.image_size, SMALL.image_size, 3), 40 + 10 * index, np.uint8)
    frames = np.stack([np.full((SMALL.video_size, SMALL.video_size, 3), 10 * t, np.uint8)
                       for t in range(SMALL.video_frames)])  # (T, S, S, 3), each different
    return encode_sample(meta.key, meta, mel, image, frames, text, SMALL)


def write_prepared(root: Path, edit: Edit | None = None, manifest: bool = True) -> Path:
    """A prepared folder: unit 0 = a.mp4 (4 clips, 2 shards), unit 1 = b.mp4 (3 clips) and
    c.mp4 (failed); stats files and, unless `manifest` is False, the manifest."""
    out = OutputDir(root)
    out.create()
    fingerprint = Fingerprint(SMALL, "mp4")
    units = []
    for unit, (source, transcript, has_audio, texts, footage) in enumerate(VIDEOS):
        samples = []
        for index, text in enumerate(texts):
            members = members_of(source, transcript, has_audio, index, text)
            if edit is not None:
                edit(source, index, members)
            samples.append(members)
        shards = []
        for number, start in enumerate(range(0, len(samples), SMALL.samples_per_shard)):
            path = out.shards / shard_name(unit, number)
            with wds.TarWriter(str(path)) as writer:
                for members in samples[start:start + SMALL.samples_per_shard]:
                    writer.write(members)
            shards.append(ShardInfo(f"shards/{path.name}",
                                    len(samples[start:start + SMALL.samples_per_shard]),
                                    path.stat().st_size))
        videos = [VideoOutcome(source, video_id(source), PREPARED, clips=len(texts),
                               footage_seconds=footage, has_audio=has_audio,
                               transcript_source=transcript)]
        sources = [source]
        if unit == 1:
            videos.append(VideoOutcome("videos/c.mp4", video_id("videos/c.mp4"), FAILED,
                                       reason="not a readable media file"))
            sources.append("videos/c.mp4")
        stats = UnitStats(unit, fingerprint.to_dict(), sources, videos, shards)
        out.write_stats(stats)
        units.append(stats)
    if manifest:
        write_manifest(out, fingerprint, units)
    return root


def inspect(*args: str) -> Any:
    return runner.invoke(app, ["inspect", *args], env=ENV)


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    return write_prepared(tmp_path / "out")


# --------------------------------------------------------------------------- summary
def test_summary_counts_footage_coverage_members_and_failures(prepared: Path) -> None:
    summary = summarize(open_target([prepared]))
    assert summary.target.kind == "directory" and summary.target.manifest is not None
    assert len(summary.shards) == 3
    assert summary.shard_bytes == sum(p.stat().st_size for p in (prepared / "shards").iterdir())
    assert summary.samples == summary.expected_samples == 7
    assert summary.videos == 2
    assert summary.footage_seconds == pytest.approx(4.6)  # recorded, not the windows' sum
    assert summary.clip_seconds == pytest.approx(7.0)
    assert summary.span_seconds == pytest.approx(2.5 + 2.0)
    assert summary.with_text == 3 and summary.with_audio == 4
    assert {(c.source, c.samples, c.with_text) for c in summary.transcripts} == {
        ("srt", 4, 3), ("none", 3, 0)}
    shapes = {m.name: (m.kind, m.dtype, m.shape) for m in summary.members}
    assert shapes == {
        "json": ("object", None, None), "txt": ("str", None, None),
        "mel.npy": ("array", "float16", [16, 100]),
        "frame.jpg": ("array", "uint8", [48, 48, 3]),
        "clip.mp4": ("array", "uint8", [16, 32, 32, 3]),
    }
    assert [(i.source, i.status) for i in summary.target.issues] == [("videos/c.mp4", "failed")]
    assert summary.target.config == SMALL.to_dict()


def test_cli_summary_shows_the_numbers(prepared: Path) -> None:
    result = inspect(str(prepared))
    assert result.exit_code == 0, result.output
    for text in ("3 (", "7 (recorded: 7)", "2 with samples", "4.6 s", "7 s in 7 windows",
                 "43% (3/7) of samples have text", "srt 3/4", "none 0/3",
                 "57% (4/7) of samples have an audio track", "(16, 32, 32, 3)", "float16",
                 "videos/c.mp4", "not a readable media file", "clip_duration=1.0"):
        assert text in result.output, text


def test_without_manifest_the_stats_files_are_used(tmp_path: Path) -> None:
    root = write_prepared(tmp_path / "out", manifest=False)
    summary = summarize(open_target([root]))
    assert summary.target.manifest is None
    assert any("no manifest.json" in note and "--part" in note for note in summary.target.notes)
    assert summary.samples == summary.expected_samples == 7
    assert summary.footage_seconds == pytest.approx(4.6)
    assert verify(open_target([root])).ok
    result = inspect(str(root))
    assert result.exit_code == 0 and "no manifest.json" in result.output

    # A unit interrupted after renaming its shards, before writing its stats file:
    stale = root / "shards" / shard_name(2, 0)
    stale.write_bytes((root / "shards" / shard_name(1, 0)).read_bytes())
    (root / "shards" / f"{shard_name(3, 0)}.tmp").write_bytes(b"")
    target = open_target([root])
    assert target.unlisted == [str(stale)]
    assert any("temporary names" in note for note in target.notes)
    messages = [(Path(p.shard or "").name, p.message) for p in verify(target).problems]
    assert (stale.name, "the shard belongs to no finished unit (left by an interrupted unit; "
                        "re-running prepare removes it)") in messages


def test_shards_missing_from_the_manifest_are_noted_not_read(prepared: Path) -> None:
    extra = prepared / "shards" / "unit-000009-000000.tar"
    extra.write_bytes((prepared / "shards" / shard_name(0, 0)).read_bytes())
    target = open_target([prepared])
    assert str(extra) not in target.shards
    assert any("not in the manifest" in note for note in target.notes)
    assert verify(target).ok


# --------------------------------------------------------------------------- samples
def test_samples_lists_keys_sources_times_and_text(prepared: Path) -> None:
    views = list_samples(open_target([prepared]), 3)
    assert [v.key for v in views] == [f"{video_id('videos/a.mp4')}_{i:06d}" for i in range(3)]
    assert [(v.start, v.end, v.text) for v in views] == [
        (0.0, 1.0, ""), (0.5, 1.5, "hello"), (1.0, 2.0, "hello world")]
    result = inspect(str(prepared), "--samples", "3")
    assert result.exit_code == 0, result.output
    for text in (views[2].key, "videos/a.mp4", "1.00–2.00", "hello world", "(srt, empty)"):
        assert text in result.output, text
    assert f"{video_id('videos/a.mp4')}_000003" not in result.output


# --------------------------------------------------------------------------- verify
def test_verify_passes_on_good_shards(prepared: Path) -> None:
    result = verify(open_target([prepared]))
    assert result.ok and result.samples == 7 and result.shards == 3
    cli = inspect(str(prepared), "--verify")
    assert cli.exit_code == 0, cli.output
    assert "verify: OK" in cli.output and "7 samples in 3 shards" in cli.output


def test_verify_in_worker_processes_finds_the_same(tmp_path: Path) -> None:
    def drop_text(source: str, index: int, members: dict[str, Any]) -> None:
        if index == 1:
            del members["txt"]

    target = open_target([write_prepared(tmp_path / "out", drop_text)])
    alone, parallel = verify(target, workers=1), verify(target, workers=2)
    assert parallel.samples == alone.samples == 7
    assert parallel.problems == alone.problems and alone.problem_count == 2


def _drop_member(name: str) -> Edit:
    def edit(source: str, index: int, members: dict[str, Any]) -> None:
        if source == "videos/a.mp4" and index == 1:
            del members[name]
    return edit


def _short_mel(source: str, index: int, members: dict[str, Any]) -> None:
    if source == "videos/b.mp4" and index == 2:
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((SMALL.n_mels, SMALL.audio_frames - 1), np.float16))
        members["mel.npy"] = buffer.getvalue()


@pytest.mark.parametrize(("edit", "message"), [
    (_drop_member("txt"), "missing member 'txt'"),
    (_drop_member("frame.jpg"), "missing member 'frame.jpg'"),
    (_short_mel, "mel.npy is float16 (16, 99), the json says float16 (16, 100)"),
])
def test_verify_fails_on_a_broken_sample(tmp_path: Path, edit: Edit, message: str) -> None:
    root = write_prepared(tmp_path / "out", edit)
    result = verify(open_target([root]))
    assert not result.ok and any(message in p.message for p in result.problems), result
    cli = inspect(str(root), "--verify")
    assert cli.exit_code == 1 and message in cli.output, cli.output


def test_verify_fails_on_a_count_mismatch_with_the_manifest(prepared: Path) -> None:
    manifest = json.loads((prepared / "manifest.json").read_text())
    manifest["shards"][2]["samples"] = 4
    (prepared / "manifest.json").write_text(json.dumps(manifest))
    result = inspect(str(prepared), "--verify")
    assert result.exit_code == 1
    assert "3 samples, the manifest says 4" in result.output
    assert "shard list holds 8 samples but its totals say 7 clips" in result.output


@pytest.mark.parametrize("keep", [0.6, "boundary"])
def test_verify_fails_on_a_truncated_shard(prepared: Path, keep: float | str) -> None:
    shard = prepared / "shards" / shard_name(0, 0)
    data = shard.read_bytes()
    if keep == "boundary":  # after the last member: tarfile reads that as a clean end
        with tarfile.open(shard) as tar:
            last = tar.getmembers()[-1]
        cut = last.offset_data + -(-last.size // 512) * 512
    else:
        cut = int(len(data) * float(keep))
    shard.write_bytes(data[:cut])
    result = verify(open_target([prepared]))
    messages = [p.message for p in result.problems]
    assert any("cut short" in m or "unreadable" in m for m in messages), messages
    assert any("bytes, the manifest says" in m for m in messages), messages
    cli = inspect(str(prepared), "--verify")
    assert cli.exit_code == 1 and "unit-000000-000000.tar" in cli.output


def test_verify_reports_a_planted_pickle_without_unpickling_it(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    def plant(source: str, index: int, members: dict[str, Any]) -> None:
        if source == "videos/a.mp4" and index == 0:
            members["pickle"] = pickle.dumps(Payload(marker))

    root = write_prepared(tmp_path / "out", plant)
    summary = summarize(open_target([root]))
    assert ("pickle", "unread") in {(m.name, m.kind) for m in summary.members}
    result = inspect(str(root), "--verify", "--export", str(tmp_path / "exp"), "--samples", "7")
    assert result.exit_code == 1
    assert "'pickle' is not part of shard schema v1" in result.output
    assert "not read (unsafe or unknown type)" in result.output
    assert "1 problem(s)" in result.output
    assert not marker.exists()


def test_verify_fails_on_duplicate_keys(tmp_path: Path) -> None:
    root = write_prepared(tmp_path / "out")
    first = root / "shards" / shard_name(0, 0)
    copy = root / "shards" / shard_name(0, 1)
    copy.write_bytes(first.read_bytes())  # the manifest's counts and sizes now differ too
    result = verify(open_target([root]))
    assert sum("duplicate key" in p.message for p in result.problems) == 3


def test_verify_of_a_missing_listed_shard(prepared: Path) -> None:
    (prepared / "shards" / shard_name(1, 0)).unlink()
    result = inspect(str(prepared), "--verify")
    assert result.exit_code == 1
    assert "missing" in result.output and "the shards hold 4 samples in all" in result.output


# --------------------------------------------------------------------------- export
def test_export_writes_pictures_pil_can_open(prepared: Path, tmp_path: Path) -> None:
    folder = tmp_path / "look"
    result = inspect(str(prepared), "--export", str(folder), "--samples", "2")
    assert result.exit_code == 0, result.output
    assert str(folder) in result.output
    key = f"{video_id('videos/a.mp4')}_000001"
    with Image.open(folder / f"{key}.frame.png") as image:
        assert image.format == "PNG" and image.size == (48, 48)
    with Image.open(folder / f"{key}.clip.gif") as gif:
        assert gif.format == "GIF" and gif.size == (32, 32) and gif.n_frames == 16
        assert abs(gif.info["duration"] - 1000 / 16) <= 10  # GIF stores centiseconds
    with Image.open(folder / f"{key}.sheet.png") as sheet:
        assert sheet.size == (4 * 32, 4 * 32)
        assert np.array(sheet.convert("RGB"))[40, 40, 0] == 50  # row 1, column 1: frame 5
    with Image.open(folder / f"{key}.mel.png") as mel:
        assert mel.size == (SMALL.audio_frames, SMALL.n_mels)
    assert (folder / f"{key}.txt").read_text(encoding="utf-8") == "hello"
    assert len(list(folder.iterdir())) == 2 * 5
    default = tmp_path / "default"
    assert inspect(str(prepared), "--export", str(default)).exit_code == 0
    assert len(list(default.iterdir())) == 4 * 5


def test_export_reports_a_sample_that_does_not_decode(tmp_path: Path) -> None:
    def corrupt(source: str, index: int, members: dict[str, Any]) -> None:
        if index == 0:
            members["frame.jpg"] = b"not a jpeg"

    root = write_prepared(tmp_path / "out", corrupt)
    exported = export_samples(open_target([root]), tmp_path / "look", 2)
    assert exported[0].error is not None and "frame.jpg" in exported[0].error
    assert exported[0].files == {} and len(exported[1].files) == 5


def test_mel_image_has_low_frequencies_at_the_bottom() -> None:
    mel = np.full((16, 10), -13.8, np.float16)
    mel[0] = 8.0  # the lowest mel band is loud
    picture = mel_image(mel)  # (M, T, 3)
    assert picture.shape == (16, 10, 3) and picture.dtype == np.uint8
    assert tuple(picture[-1, 0]) == tuple(colormap(np.array(1.0)))
    assert tuple(picture[0, 0]) == tuple(colormap(np.array(0.0)))
    assert (mel_image(np.zeros((4, 4), np.float16)) == colormap(np.array(0.0))).all()


def test_contact_sheet_fills_a_square_grid_row_by_row() -> None:
    frames = np.stack([np.full((2, 3, 3), t, np.uint8) for t in range(5)])  # (5, 2, 3, 3)
    sheet = contact_sheet(frames)  # 3 columns, 2 rows
    assert sheet.shape == (4, 9, 3)
    assert sheet[0, 3, 0] == 1 and sheet[2, 0, 0] == 3 and sheet[2, 6, 0] == 0


# --------------------------------------------------------------------------- json, paths
def test_json_is_one_document_with_everything(prepared: Path, tmp_path: Path) -> None:
    result = inspect(str(prepared), "--json", "--verify", "--samples", "2", "--export",
                     str(tmp_path / "look"))
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["summary"]["samples"] == 7
    assert document["summary"]["text_fraction"] == pytest.approx(3 / 7)
    assert document["summary"]["footage_seconds"] == pytest.approx(4.6)
    assert document["summary"]["target"]["issues"][0]["source"] == "videos/c.mp4"
    assert document["verify"]["ok"] is True and document["verify"]["samples"] == 7
    assert [s["text"] for s in document["samples"]] == ["", "hello"]
    assert len(document["export"]["samples"]) == 2


def test_a_single_shard_and_a_brace_pattern(prepared: Path) -> None:
    shard = prepared / "shards" / shard_name(0, 0)
    result = inspect(str(shard), "--verify")
    assert result.exit_code == 0, result.output
    assert "1 shard" in result.output and "3 samples in 1 shard " in result.output
    assert "unknown without a manifest" in result.output
    pattern = str(prepared / "shards" / "unit-00000{0..1}-000000.tar")
    result = inspect(pattern, "--verify", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["summary"]["target"]["kind"] == "shards"
    assert document["summary"]["samples"] == 6 and document["verify"]["shards"] == 2


def test_verify_without_manifest_checks_against_the_first_sample(tmp_path: Path) -> None:
    def other_size(source: str, index: int, members: dict[str, Any]) -> None:
        if source == "videos/b.mp4":
            config = PrepareConfig.from_dict({**SMALL.to_dict(), "n_mels": 8})
            meta = SampleMeta.build(config, source=source, video_id=video_id(source),
                                    clip_index=index, start=0.5 * index, end=0.5 * index + 1,
                                    rotation=0, has_audio=False, transcript_source="none",
                                    transcript_timed=True)
            mel = np.zeros((8, config.audio_frames), np.float16)
            image = np.zeros((48, 48, 3), np.uint8)
            frames = np.zeros((16, 32, 32, 3), np.uint8)
            members.update(encode_sample(meta.key, meta, mel, image, frames, "", config))

    root = write_prepared(tmp_path / "out", other_size)
    pattern = str(root / "shards" / "unit-00000{0,1}-000000.tar")
    result = verify(open_target([pattern]))
    assert result.problem_count == 3
    assert "its n_mels is 8, the shard set's config says 16" in result.problems[0].message


@pytest.mark.parametrize(("args", "code", "message"), [
    (["missing/dir"], 1, "does not exist"),
    (["missing/shard-{0..1}.tar"], 1, "does not exist"),
])
def test_bad_paths_give_a_clear_error(tmp_path: Path, args: list[str], code: int,
                                      message: str) -> None:
    result = inspect(*[str(tmp_path / arg) for arg in args])
    assert result.exit_code == code and message in result.output, result.output


def test_unusable_folders_and_usage_errors(prepared: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = inspect(str(empty))
    assert result.exit_code == 1 and "neither manifest.json nor shards/*.tar" in result.output
    (prepared / "manifest.json").write_text("{not json")
    result = inspect(str(prepared))
    assert result.exit_code == 1 and "re-run omni prepare" in result.output
    assert inspect(str(empty), str(prepared)).exit_code == 2
    assert inspect(str(prepared), "--samples", "-1").exit_code == 2
    with pytest.raises(ConfigError, match="local file"):
        open_target(["pipe:cat x.tar"])


# --------------------------------------------------------------------------- hostile input
def _no_tar(root: Path) -> bytes:
    return b"# OmniLatent\n\nA README is no shard.\n" * 40


def _random_bytes(root: Path) -> bytes:
    return np.random.default_rng(0).integers(0, 256, 8000, np.uint8).tobytes()


def _gzipped_shard(root: Path) -> bytes:
    return gzip.compress((root / "shards" / shard_name(0, 0)).read_bytes())


@pytest.mark.parametrize("content", [_no_tar, _random_bytes, _gzipped_shard])
def test_a_file_that_is_no_plain_tar_exits_1(prepared: Path, tmp_path: Path,
                                             content: Callable[[Path], bytes]) -> None:
    path = tmp_path / "README.md"
    path.write_bytes(content(prepared))
    result = inspect(str(path))
    assert result.exit_code == 1, result.output
    assert "1 of 1 shard missing or unreadable" in result.output
    assert inspect(str(path), "--json").exit_code == 1
    assert not verify(open_target([path])).ok


def test_json_holds_null_where_a_manifest_holds_nan(prepared: Path) -> None:
    manifest = json.loads((prepared / "manifest.json").read_text())
    manifest["totals"]["footage_seconds"] = float("nan")
    (prepared / "manifest.json").write_text(json.dumps(manifest))  # Python writes NaN

    def strict(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    result = inspect(str(prepared), "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout, parse_constant=strict)
    assert document["summary"]["footage_seconds"] is None
    assert document["summary"]["target"]["totals"]["footage_seconds"] is None


def test_shard_entries_outside_the_folder_are_refused(prepared: Path, tmp_path: Path) -> None:
    elsewhere = write_prepared(tmp_path / "elsewhere")
    manifest = json.loads((prepared / "manifest.json").read_text())
    manifest["shards"][1]["path"] = f"../elsewhere/shards/{shard_name(0, 0)}"
    (prepared / "manifest.json").write_text(json.dumps(manifest))
    result = inspect(str(prepared), "--verify")
    assert result.exit_code == 1 and "never an absolute path" in result.output, result.output

    (prepared / "manifest.json").unlink()  # the stats files are read instead: the same rule
    stats_path = OutputDir(prepared).stats_path(0)
    stats = json.loads(stats_path.read_text())
    stats["shards"][0]["path"] = str(elsewhere / "shards" / shard_name(0, 0))
    stats_path.write_text(json.dumps(stats))
    with pytest.raises(ConfigError, match="unit-000000.json lists the shard"):
        open_target([prepared])


def test_a_shard_link_out_of_a_folder_without_manifest_is_refused(tmp_path: Path) -> None:
    elsewhere = write_prepared(tmp_path / "elsewhere")
    root = write_prepared(tmp_path / "out", manifest=False)
    link = root / "shards" / shard_name(1, 0)
    link.unlink()
    link.symlink_to(elsewhere / "shards" / shard_name(1, 0))
    with pytest.raises(ConfigError, match="a link that leads outside"):
        open_target([root])


def _wide_clip(source: str, index: int, members: dict[str, Any]) -> None:
    if source == "videos/a.mp4" and index == 1:  # 64 px frames in a set of 32 px clips
        members["clip.mp4"] = encode_clip(np.zeros((16, 64, 64, 3), np.uint8), "mp4", 16)


@pytest.mark.parametrize("manifest", [True, False])
def test_verify_and_export_refuse_a_clip_of_another_size_undecoded(
        tmp_path: Path, manifest: bool) -> None:
    root = write_prepared(tmp_path / "out", _wide_clip, manifest=manifest)
    message = "member 'clip.mp4': frames of 64x64, the shard set's clips are 32x32"
    result = verify(open_target([root]))
    assert [p.message for p in result.problems if p.key and p.key.endswith("1")] == [message]
    exported = export_samples(open_target([root]), tmp_path / "look", 2)
    assert exported[1].files == {} and message in (exported[1].error or "")
    assert len(exported[0].files) == 5


def test_a_member_over_its_cap_is_a_problem_and_left_unread(tmp_path: Path) -> None:
    def long_text(source: str, index: int, members: dict[str, Any]) -> None:
        if source == "videos/a.mp4" and index == 1:
            members["txt"] = b"a" * (MAX_TEXT_BYTES + 1)

    root = write_prepared(tmp_path / "out", long_text)
    target = open_target([root])
    assert summarize(target).unreadable_meta == 1
    messages = [p.message for p in verify(target).problems]
    assert messages == [f"member 'txt' declares {MAX_TEXT_BYTES + 1} bytes, more than the "
                        f"{MAX_TEXT_BYTES} such a member may hold; skipped unread"]
    assert "skipped unread" in (export_samples(target, tmp_path / "look", 2)[1].error or "")


def test_help_has_examples() -> None:
    result = inspect("--help")
    assert result.exit_code == 0
    for text in ("Examples", "--verify", "--samples", "--export", "--json", "--workers",
                 "brace pattern"):
        assert text in result.output, text


# --------------------------------------------------------------------------- end to end
def test_a_real_prepare_inspects_and_verifies(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "talk.mp4", duration=3.0, size=(64, 48))
    (videos / "talk.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nhi there\n",
                                     encoding="utf-8")
    out = tmp_path / "out"
    prepared = runner.invoke(app, ["prepare", str(videos), str(out), "--workers", "1"], env=ENV)
    assert prepared.exit_code == 0, prepared.output
    result = inspect(str(out), "--verify", "--samples", "2", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["verify"]["ok"] and document["summary"]["samples"] == 2
    assert document["summary"]["footage_seconds"] == pytest.approx(3.0, abs=0.1)
    assert [s["text"] for s in document["samples"]] == ["hi there", "hi there"]
