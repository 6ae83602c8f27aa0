"""`pipeline.prepare`: folders of tiny generated videos -> shards, checked member by member.

One module-scoped run prepares a corpus that holds every awkward input named in the issue
(bad files, rotation, variable frame rate, subtitle encodings, a symlink cycle, odd names);
the tests then read its shards back with plain `tarfile`. Resume, `--part`, configuration
changes and a full disk use a small "trio" corpus and compare against one uninterrupted run.
Worker processes come from one forkserver per test session, so later runs start quickly.
"""

from __future__ import annotations

import codecs
import errno
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from media import (
    make_audio_only,
    make_video,
    mux_subtitles,
    random_bytes_file,
    read_samples,
    stripe_side,
    truncate_file,
)

from pipeline.config import PrepareConfig
from pipeline.errors import PipelineError
from pipeline.media.audio import silent_log_mel
from pipeline.media.discover import discover_videos
from pipeline.media.ffmpeg_bin import ffmpeg_binary
from pipeline.media.transcripts import Cue, Transcript
from pipeline.media.windows import window_count
from pipeline.prepare import run as prepare_module
from pipeline.prepare import video_job
from pipeline.prepare.plan import Part, plan_units, select_part
from pipeline.prepare.run import (
    ConfigMismatchError,
    PrepareResult,
    RunOptions,
    decoder_threads,
    prepare,
)
from pipeline.prepare.sample import VideoContext
from pipeline.prepare.video_job import VideoTask, prepare_video
from pipeline.shards.decode import decode_member
from pipeline.shards.files import PartWriter, write_unit_shards
from pipeline.shards.outcome import OutputError

REPO = Path(__file__).resolve().parents[1]
CONFIG = PrepareConfig(videos_per_unit=4, samples_per_shard=5)
SMALL = (64, 48)  # coded size; frames still come out at 112 and 224
LATIN1_NAME = os.fsdecode(b"caf\xe9.mp4")
LONGAUDIO_WORDS = [f"word{index:02d}" for index in range(12)]
SRT_ALIGNED = """1
00:00:00,200 --> 00:00:00,900
first

2
00:00:02,000 --> 00:00:03,000
hello world
"""
UTF16_TEXT = "héllo wörld ☃"
CP1252_TEXT = "café naïve"


def srt(text: str, start: str = "00:00:00,500", end: str = "00:00:01,500") -> str:
    return f"1\n{start} --> {end}\n{text}\n"


def by_source(result: PrepareResult) -> dict[str, object]:
    return {video.source: video for video in result.videos}


def metas(samples: dict[str, dict[str, bytes]], source: str) -> list[dict]:
    found = [json.loads(members["json"]) for members in samples.values()]
    return sorted((m for m in found if m["source"] == source), key=lambda m: m["clip_index"])


# --------------------------------------------------------------------------- the corpus
@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    root = tmp_path_factory.mktemp("corpus")
    made = {}
    made["aligned.mp4"] = make_video(root / "aligned.mp4", duration=4.0, size=SMALL)
    (root / "aligned.srt").write_text(SRT_ALIGNED, encoding="utf-8")
    for name, seconds in [("d2.mp4", 2.0), ("d3_5.mkv", 3.5), ("d5.mov", 5.0),
                          ("short.mp4", 1.5)]:
        made[name] = make_video(root / name, duration=seconds, size=SMALL)
    made["noaudio.mp4"] = make_video(root / "noaudio.mp4", duration=3.0, size=SMALL, audio=None)
    make_audio_only(root / "audio_only.mp4", duration=3.0)
    (root / "zero.mp4").write_bytes(b"")
    random_bytes_file(root / "random.mp4", 20_000)
    make_video(root / "cut.mkv", duration=6.0, size=SMALL)
    truncate_file(root / "cut.mkv", 0.6)
    made["rotated.mp4"] = make_video(root / "rotated.mp4", duration=3.0, size=SMALL,
                                     rotation=90)
    made["vfr.mkv"] = make_video(root / "vfr.mkv", duration=3.0, size=SMALL, vfr=True)
    make_video(root / "utf16.mp4", duration=2.0, size=SMALL)
    (root / "utf16.srt").write_bytes(codecs.BOM_UTF16_LE + srt(UTF16_TEXT).encode("utf-16-le"))
    make_video(root / "cp1252.mp4", duration=2.0, size=SMALL)
    (root / "cp1252.srt").write_bytes(srt(CP1252_TEXT).encode("cp1252"))
    make_video(root / "broken.mp4", duration=2.0, size=SMALL)
    (root / "broken.srt").write_bytes(b"this is not\x00 a subtitle file at all")
    make_video(root / "untimed.mp4", duration=3.0, size=SMALL)
    (root / "untimed.txt").write_text("one two three four five six", encoding="utf-8")
    (root / "sub dir").mkdir()
    make_video(root / "sub dir" / "näme with spaces é.mp4", duration=2.0, size=SMALL)
    plain = make_video(root / "plain.mp4", duration=3.0, size=SMALL)
    subtitles = root / "embedded.srt.src"
    subtitles.write_text(srt("embedded words", "00:00:00,200", "00:00:00,800"), "utf-8")
    mux_subtitles(plain.path, subtitles, root / "embedded.mkv")
    plain.path.unlink()
    (root / "loop").symlink_to(root, target_is_directory=True)  # a symlink cycle
    # A name that is not UTF-8 (latin-1 bytes from an old share): os.walk gives it to us with
    # lone surrogates, which must survive the stats, the manifest and the sample json.
    shutil.copyfile(root / "d2.mp4", root / LATIN1_NAME)
    # Audio that runs 2 s past a 3 s picture, with an untimed transcript.
    parts = tmp_path_factory.mktemp("parts")
    picture = make_video(parts / "picture.mkv", duration=3.0, size=SMALL, audio=None)
    sound = make_audio_only(parts / "sound.m4a", duration=5.0)
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-i", str(picture.path),
                    "-i", str(sound.path), "-map", "0:v", "-map", "1:a", "-c", "copy",
                    str(root / "longaudio.mkv")], check=True)
    (root / "longaudio.txt").write_text(" ".join(LONGAUDIO_WORDS), encoding="utf-8")
    return root, made


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> tuple[PrepareResult, dict[str, dict[str, bytes]]]:
    root, _ = corpus
    out = tmp_path_factory.mktemp("prepared") / "out"
    result = prepare(root, out, CONFIG, RunOptions(workers=2))
    return result, read_samples(out)


def test_every_video_is_reported_and_the_run_completes(prepared) -> None:
    result, samples = prepared
    status = {video.source: (video.status, video.reason) for video in result.videos}
    assert len(status) == 20  # the symlink cycle adds nothing
    assert status["zero.mp4"] == ("failed", "empty file (0 bytes)")
    assert status["random.mp4"][0] == "failed" and "not a readable" in status["random.mp4"][1]
    assert status["audio_only.mp4"] == ("skipped", "no video stream (audio only)")
    assert status["short.mp4"] == ("skipped", "shorter than one clip (1.50 s < 2 s)")
    bad = {"zero.mp4", "random.mp4", "audio_only.mp4", "short.mp4"}
    assert all(s == "prepared" for name, (s, _) in status.items() if name not in bad)
    assert result.manifest is not None and result.units_missing == 0
    assert result.totals.clips == len(samples) == sum(v.clips for v in result.videos)
    assert not list((result.out_dir / "tmp").iterdir())  # part files cleaned up


def test_clip_counts_follow_the_duration(prepared, corpus) -> None:
    result, samples = prepared
    videos = by_source(result)
    for name, expected in [("aligned.mp4", 3), ("d2.mp4", 1), ("d3_5.mkv", 2), ("d5.mov", 4),
                           ("noaudio.mp4", 2)]:
        assert videos[name].clips == expected, name
        assert len(metas(samples, name)) == expected
    vfr = videos["vfr.mkv"]
    assert vfr.clips == window_count(vfr.footage_seconds, CONFIG) >= 2
    starts = [m["start"] for m in metas(samples, "d5.mov")]
    assert starts == [0.0, 1.0, 2.0, 3.0]


def test_transcript_is_in_exactly_the_windows_that_overlap_the_cue(prepared) -> None:
    _, samples = prepared
    texts = {}
    for meta in metas(samples, "aligned.mp4"):
        texts[meta["start"]] = samples[meta["key"]]["txt"].decode("utf-8")
        assert meta["transcript_source"] == "srt" and meta["transcript_timed"] is True
    # cue 2.0-3.0 s overlaps [1, 3) and [2, 4) only; cue 0.2-0.9 s only [0, 2)
    assert texts == {0.0: "first", 1.0: "hello world", 2.0: "hello world"}


def test_no_audio_gets_silent_mel_and_has_audio_false(prepared) -> None:
    _, samples = prepared
    for meta in metas(samples, "noaudio.mp4"):
        assert meta["has_audio"] is False
        mel = decode_member("mel.npy", samples[meta["key"]]["mel.npy"])
        np.testing.assert_array_equal(mel, silent_log_mel(CONFIG))
    with_audio = metas(samples, "aligned.mp4")[0]
    assert with_audio["has_audio"] is True
    mel = decode_member("mel.npy", samples[with_audio["key"]]["mel.npy"])
    assert mel.shape == (128, 200) and mel.dtype == np.float16
    assert mel.astype(np.float32).std() > 0.1


def test_members_have_the_schema_shapes(prepared) -> None:
    _, samples = prepared
    members = next(iter(samples.values()))
    assert sorted(members) == ["clip.mp4", "frame.jpg", "json", "mel.npy", "txt"]
    assert decode_member("frame.jpg", members["frame.jpg"]).shape == (224, 224, 3)
    assert decode_member("clip.mp4", members["clip.mp4"]).shape == (16, 112, 112, 3)
    assert all("." not in key for key in samples)


def test_rotation_is_applied_and_recorded(prepared) -> None:
    _, samples = prepared
    meta = metas(samples, "rotated.mp4")[0]
    assert meta["rotation"] == 90
    image = decode_member("frame.jpg", samples[meta["key"]]["frame.jpg"])
    # the stripe marks the top of the coded picture; turned 90 degrees clockwise for display
    assert stripe_side(image) == "right"


def test_subtitle_encodings_come_out_right(prepared) -> None:
    _, samples = prepared
    for source, text in [("utf16.mp4", UTF16_TEXT), ("cp1252.mp4", CP1252_TEXT)]:
        meta = metas(samples, source)[0]
        assert samples[meta["key"]]["txt"].decode("utf-8") == text, source
    embedded = metas(samples, "embedded.mkv")
    assert embedded[0]["transcript_source"] == "embedded"
    assert samples[embedded[0]["key"]]["txt"] == b"embedded words"
    assert samples[embedded[1]["key"]]["txt"] == b""  # [1, 3) misses the 0.2-0.8 s cue


def test_broken_subtitle_is_a_warning_and_the_video_is_prepared(prepared) -> None:
    result, samples = prepared
    video = by_source(result)["broken.mp4"]
    assert video.status == "prepared" and video.transcript_source == "none"
    assert video.transcript_error and "broken.srt" in video.transcript_error
    assert any("transcript ignored" in warning for warning in video.warnings)
    meta = metas(samples, "broken.mp4")[0]
    assert meta["transcript_source"] == "none" and samples[meta["key"]]["txt"] == b""
    stats = json.loads((result.out_dir / "stats" / "unit-000000.json").read_text())
    stats_videos = {v["source"]: v for v in stats["videos"]}
    assert stats_videos["broken.mp4"]["transcript_error"] == video.transcript_error


def test_untimed_text_is_shared_out_in_order(prepared) -> None:
    _, samples = prepared
    found = metas(samples, "untimed.mp4")
    assert [m["transcript_timed"] for m in found] == [False, False]
    texts = [samples[m["key"]]["txt"].decode() for m in found]
    # 3 s video, windows [0, 2) and [1, 3): the words placed in [0, 2) then [1, 3)
    assert texts[0].split()[0] == "one" and texts[1].split()[-1] == "six"


def test_truncated_file_keeps_the_clips_before_the_cut(prepared) -> None:
    result, samples = prepared
    video = by_source(result)["cut.mkv"]
    assert video.status == "prepared" and 1 <= video.clips < 5
    # Matroska's demuxer reaches the cut without an error: the short picture is the sign.
    assert any("file cut short" in warning for warning in video.warnings), video.warnings
    assert len(metas(samples, "cut.mkv")) == video.clips


def test_file_names_that_are_not_utf8(prepared) -> None:
    result, samples = prepared
    assert by_source(result)[LATIN1_NAME].status == "prepared"
    assert metas(samples, LATIN1_NAME)[0]["source"] == LATIN1_NAME
    manifest = json.loads(result.manifest.read_text(encoding="utf-8"))
    assert manifest["totals"]["clips"] == len(samples)


def test_untimed_text_is_spread_over_the_picture_not_the_longer_audio(prepared) -> None:
    # The container states 5 s (its audio); the windows cover the 3 s picture. Spread over
    # 5 s, the last words would fall after every window.
    result, samples = prepared
    video = by_source(result)["longaudio.mkv"]
    assert video.status == "prepared" and video.clips == 2
    texts = [samples[m["key"]]["txt"].decode("utf-8") for m in metas(samples, "longaudio.mkv")]
    assert sorted(set(" ".join(texts).split())) == LONGAUDIO_WORDS
    assert any("audio outlasting the picture" in warning for warning in video.warnings)


def test_names_with_spaces_and_non_ascii(prepared) -> None:
    result, samples = prepared
    name = "sub dir/näme with spaces é.mp4"
    video = by_source(result)[name]
    assert video.status == "prepared"
    meta = metas(samples, name)[0]
    assert meta["source"] == name and "." not in meta["key"] and " " not in meta["key"]


def test_manifest_lists_every_shard_and_failure(prepared) -> None:
    result, samples = prepared
    manifest = json.loads(result.manifest.read_text(encoding="utf-8"))
    assert manifest["schema_version"] == 1 and manifest["config"] == CONFIG.to_dict()
    assert sum(shard["samples"] for shard in manifest["shards"]) == len(samples)
    for shard in manifest["shards"]:
        path = result.out_dir / shard["path"]
        assert path.stat().st_size == shard["bytes"]
        assert shard["samples"] <= CONFIG.samples_per_shard
    failures = {item["source"] for item in manifest["failures"]}
    assert failures == {"zero.mp4", "random.mp4"}
    assert manifest["totals"]["videos"] == 20 and manifest["totals"]["clips"] == len(samples)


def test_loader_reads_the_prepared_folder(prepared) -> None:
    from pipeline.shards.shardset import resolve_shards

    result, samples = prepared
    shard_set = resolve_shards(result.out_dir)
    assert sum(shard_set.sample_counts.values()) == len(samples)


def test_ffmpeg_decoder_gives_the_same_clips_and_text(tmp_path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    make_video(source / "a.mp4", duration=4.0, size=SMALL)
    (source / "a.srt").write_text(SRT_ALIGNED, encoding="utf-8")
    texts = {}
    for decoder in ("pyav", "ffmpeg"):
        out = tmp_path / decoder
        prepare(source, out, PrepareConfig(decoder=decoder), RunOptions(workers=1))
        samples = read_samples(out)
        texts[decoder] = {key: members["txt"] for key, members in samples.items()}
    assert texts["pyav"] == texts["ffmpeg"] and len(texts["pyav"]) == 3


def test_one_frame_video_is_skipped_by_both_decoders(tmp_path) -> None:
    # A single frame (a photo saved as .mp4) is too short, not broken: the ffmpeg backend once
    # failed it with ffmpeg's "Nothing was written into output file".
    (tmp_path / "in").mkdir()
    make_video(tmp_path / "in" / "one.mp4", duration=1 / 24, size=SMALL, audio=None)
    (source,) = discover_videos(tmp_path / "in")
    for decoder in ("pyav", "ffmpeg"):
        task = VideoTask(source, tmp_path / f"{decoder}.tar", PrepareConfig(decoder=decoder))
        outcome = prepare_video(task, lambda message: None)
        assert outcome.status == "skipped", decoder
        assert outcome.reason and outcome.reason.startswith("shorter than one clip (0.0"), decoder


def test_a_matroska_that_starts_late_is_complete_not_cut_short(tmp_path) -> None:
    # Matroska starting at 10 s states 13 s (its end time): the 3 s picture fills it. A file
    # cut short still gets the warning (see test_truncated_file_keeps_the_clips_before_the_cut).
    (tmp_path / "in").mkdir()
    plain = make_video(tmp_path / "plain.mkv", duration=3.0, size=SMALL).path
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-i", str(plain), "-c", "copy",
                    "-output_ts_offset", "10", str(tmp_path / "in" / "late.mkv")], check=True)
    (source,) = discover_videos(tmp_path / "in")
    outcome = prepare_video(VideoTask(source, tmp_path / "part.tar", CONFIG), lambda message: None)
    assert (outcome.status, outcome.clips, outcome.warnings) == ("prepared", 2, [])


def test_a_long_video_cut_before_its_first_clip_fails_rather_than_skips(tmp_path) -> None:
    # Matroska cut after ~1 s of a 6 s video reads to the cut without a decoder error: it is
    # broken, not a short clip, and the reason says how much of it is there.
    (tmp_path / "in").mkdir()
    make_video(tmp_path / "in" / "cut.mkv", duration=6.0, size=SMALL)
    truncate_file(tmp_path / "in" / "cut.mkv", 0.15)
    (source,) = discover_videos(tmp_path / "in")
    outcome = prepare_video(VideoTask(source, tmp_path / "part.tar", CONFIG), lambda message: None)
    assert outcome.status == "failed" and outcome.clips == 0
    assert outcome.reason is not None
    assert outcome.reason.startswith("no complete clip: the picture ends at"), outcome.reason


def test_mirrored_video_is_shown_and_recorded_as_players_show_it(tmp_path) -> None:
    # A front camera's display matrix turns and mirrors: ffmpeg's autorotate turns this one
    # 270 degrees clockwise, then mirrors it left-right, so the coded top ends up on the right.
    (tmp_path / "in").mkdir()
    plain = make_video(tmp_path / "plain.mp4", duration=2.0, size=SMALL, audio=None).path
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-display_rotation", "90",
                    "-display_hflip", "-i", str(plain), "-c", "copy",
                    str(tmp_path / "in" / "selfie.mov")], check=True)  # fmt: skip
    (source,) = discover_videos(tmp_path / "in")
    outcome = prepare_video(VideoTask(source, tmp_path / "part.tar", CONFIG), lambda message: None)
    assert (outcome.status, outcome.rotation, outcome.flip) == ("prepared", 270, True)
    assert outcome.to_dict()["flip"] is True  # kept in the unit's stats file
    with tarfile.open(tmp_path / "part.tar") as tar:
        (member,) = [m for m in tar if m.name.endswith(".frame.jpg")]
        image = decode_member("frame.jpg", tar.extractfile(member).read())
    assert stripe_side(image) == "right"


# --------------------------------------------------------------------------- isolation
def test_crash_hang_and_exception_fail_alone(tmp_path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for name in ("fault_crash", "fine", "fault_hang", "fault_raise"):  # tests/faults.py
        make_video(source / f"{name}.mp4", duration=2.0, size=SMALL)
    started = time.monotonic()
    result = prepare(source, tmp_path / "out", PrepareConfig(videos_per_unit=2),
                     RunOptions(workers=2, timeout_min_s=3, timeout_factor=1.0))
    assert time.monotonic() - started < 60
    reasons = {video.source: (video.status, video.reason) for video in result.videos}
    assert reasons == {
        "fault_crash.mp4": ("failed", "worker crashed with SIGSEGV"),
        "fine.mp4": ("prepared", None),
        "fault_hang.mp4": ("failed", "timed out after 3 s"),
        "fault_raise.mp4": ("failed", "RuntimeError: fault injected by tests/faults.py"),
    }
    assert result.manifest is not None
    assert len(read_samples(tmp_path / "out")) == 1  # fine.mp4's single clip
    assert not list((tmp_path / "out" / "tmp").iterdir())


# --------------------------------------------------------------------------- resume & parts
TRIO_CONFIG = PrepareConfig(videos_per_unit=1, samples_per_shard=2)


@pytest.fixture(scope="module")
def trio(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trio")
    for index in range(6):
        make_video(root / f"v{index}.mp4", duration=4.0 + index % 3, size=SMALL)
    (root / "v2.srt").write_text(srt("two"), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def reference(trio, tmp_path_factory) -> Path:
    """The trio prepared in one uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    prepare(trio, out, TRIO_CONFIG, RunOptions(workers=2))
    return out


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((out / "shards").glob("*.tar"))}


def assert_complete_tar(path: Path) -> None:
    """A final-named shard must be whole: readable to the end, with the end-of-archive."""
    data = path.read_bytes()
    assert len(data) % 512 == 0 and data[-1024:] == bytes(1024), path.name
    with tarfile.open(path) as tar:
        for member in tar:
            handle = tar.extractfile(member)
            assert handle is not None and len(handle.read()) == member.size


def test_killed_run_resumes_to_the_same_samples(trio, reference, tmp_path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-c", "from cli.app import main; main()", "prepare", str(trio),
               str(out), "--workers", "1", "--videos-per-unit", "1", "--samples-per-shard",
               "2", "--json"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    checked = 0
    try:
        deadline = time.monotonic() + 120
        while not (out / "stats" / "unit-000000.json").exists():
            assert process.poll() is None, "prepare ended before its first unit was committed"
            assert time.monotonic() < deadline
            for shard in (out / "shards").glob("*.tar") if (out / "shards").is_dir() else []:
                assert_complete_tar(shard)
                checked += 1
            time.sleep(0.005)
        process.kill()
    finally:
        process.kill()
        process.wait()
    assert not (out / "manifest.json").exists(), "the run was not interrupted mid-way"
    for shard in (out / "shards").glob("*.tar"):
        assert_complete_tar(shard)
    first = prepare(trio, out, TRIO_CONFIG, RunOptions(workers=2))
    assert first.plan.units_done >= 1 and first.plan.units_todo >= 1
    assert first.manifest is not None
    assert read_samples(out) == read_samples(reference)
    assert shard_bytes(out) == shard_bytes(reference)  # shards are reproducible
    assert not list((out / "shards").glob("*.tmp")) and not list((out / "tmp").iterdir())


def test_rerun_skips_every_done_unit(trio, reference) -> None:
    before = shard_bytes(reference)
    result = prepare(trio, reference, TRIO_CONFIG, RunOptions(workers=2))
    assert result.plan.units_done == result.plan.units_in_part == 6
    assert result.plan.units_todo == 0 and result.manifest is not None
    assert result.totals.clips == len(read_samples(reference))
    assert shard_bytes(reference) == before


def test_other_config_is_refused_unless_overwrite(trio, reference, tmp_path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    other = PrepareConfig(videos_per_unit=3, samples_per_shard=2, fps=4)
    with pytest.raises(ConfigMismatchError, match=r"fps: 8 -> 4") as caught:
        prepare(trio, out, other, RunOptions(workers=2))
    assert "videos_per_unit: 1 -> 3" in caught.value.differences
    assert "--overwrite" in str(caught.value)
    result = prepare(trio, out, other, RunOptions(workers=2, overwrite=True))
    assert result.plan.units == 2 and result.manifest is not None
    assert not (out / "stats" / "unit-000005.json").exists()
    assert {json.loads(m["json"])["fps"] for m in read_samples(out).values()} == {4}


def test_parts_together_equal_a_single_run(trio, reference, tmp_path) -> None:
    out = tmp_path / "parts"
    first = prepare(trio, out, TRIO_CONFIG, RunOptions(workers=2, part=Part(1, 2)))
    assert first.manifest is None and first.units_missing == 3
    assert not (out / "manifest.json").exists()
    assert [v.source for v in first.videos] == ["v0.mp4", "v2.mp4", "v4.mp4"]
    second = prepare(trio, out, TRIO_CONFIG, RunOptions(workers=2, part=Part(2, 2)))
    assert second.manifest is not None and second.units_missing == 0
    assert read_samples(out) == read_samples(reference)
    ours = json.loads((out / "manifest.json").read_text())
    theirs = json.loads((reference / "manifest.json").read_text())
    assert ours["shards"] == theirs["shards"] and ours["totals"] == theirs["totals"]


def test_full_disk_stops_the_run_and_a_rerun_resumes(trio, reference, tmp_path,
                                                     monkeypatch) -> None:
    out = tmp_path / "full"
    real = prepare_module.write_unit_shards
    calls = []

    def fill_up(parts, out_dir, unit, samples_per_shard):
        calls.append(unit)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(parts, out_dir, unit, samples_per_shard)

    monkeypatch.setattr(prepare_module, "write_unit_shards", fill_up)
    with pytest.raises(OutputError, match="No space left on device.*rerun the same command"):
        prepare(trio, out, TRIO_CONFIG, RunOptions(workers=1))
    committed = sorted(path.name for path in (out / "stats").glob("*.json"))
    assert committed == [f"unit-{calls[0]:06d}.json"]
    assert not (out / "manifest.json").exists()
    assert not list((out / "shards").glob(f"unit-{calls[1]:06d}-*"))
    assert not list((out / "tmp").iterdir())
    monkeypatch.setattr(prepare_module, "write_unit_shards", real)
    result = prepare(trio, out, TRIO_CONFIG, RunOptions(workers=2))
    assert result.plan.units_done == 1 and result.manifest is not None
    assert read_samples(out) == read_samples(reference)


@pytest.mark.parametrize("threads", [0, 1])  # 0: encoding in a thread of its own; 1: in line
def test_worker_write_failure_is_an_output_error(trio, tmp_path, monkeypatch,
                                                threads: int) -> None:
    def no_space(self, sample):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(PartWriter, "write", no_space)
    source = discover_videos(trio)[0]
    part = tmp_path / "part.tar"
    with pytest.raises(OutputError, match="No space left on device"):
        prepare_video(VideoTask(source, part, TRIO_CONFIG, threads=threads),
                      lambda message: None)
    assert not part.exists()


def test_a_one_thread_worker_writes_the_part_file_of_a_threaded_one(trio, tmp_path,
                                                                   monkeypatch) -> None:
    # threads=1 encodes each window in line on the decoding thread; 3 decoder threads encode
    # in a second thread. Same windows, same order: the same bytes.
    started = []

    class CountedThread(video_job._EncodeThread):
        def __init__(self, *args) -> None:
            started.append(1)
            super().__init__(*args)

    monkeypatch.setattr(video_job, "_EncodeThread", CountedThread)
    source = discover_videos(trio)[0]
    parts = {}
    for threads in (1, 3):
        part = tmp_path / f"part-{threads}.tar"
        outcome = prepare_video(VideoTask(source, part, TRIO_CONFIG, threads=threads),
                                lambda message: None)
        assert outcome.status == "prepared" and outcome.clips > 1
        assert len(started) == (threads > 1)  # the encoding thread ran only for 3
        parts[threads] = part.read_bytes()
    assert parts[1] == parts[3]


# --------------------------------------------------------------------------- small pieces
def test_part_selection_is_disjoint_and_complete(trio) -> None:
    units = plan_units(discover_videos(trio), 4)
    assert [len(unit.sources) for unit in units] == [4, 2]
    units = plan_units(discover_videos(trio), 1)
    picked = [unit.index for i in (1, 2, 3) for unit in select_part(units, Part(i, 3))]
    assert sorted(picked) == list(range(6))
    assert [u.index for u in select_part(units, Part(2, 3))] == [1, 4]
    assert Part.parse("2/8") == Part(2, 8)
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(PipelineError):
            Part.parse(bad)


def test_unit_shards_split_by_count_and_keep_order(tmp_path) -> None:
    parts = []
    for video, count in enumerate([2, 0, 4, 3]):
        with PartWriter(tmp_path / f"{video}.tar") as writer:
            for clip in range(count):
                writer.write({"__key__": f"v{video}_{clip:06d}", "txt": f"{video}/{clip}".encode()})
        parts.append(writer.close())
    shards = write_unit_shards({"train": parts[:3], "eval": parts[3:]}, tmp_path, 7,
                               samples_per_shard=4)
    assert [(s.path, s.samples, s.split) for s in shards] == [
        ("shards/unit-000007-000000.tar", 4, "train"),
        ("shards/unit-000007-000001.tar", 2, "train"),
        ("shards/unit-000007-eval-000000.tar", 3, "eval")]
    keys = []
    for shard in shards:
        assert_complete_tar(tmp_path / shard.path)
        with tarfile.open(tmp_path / shard.path) as tar:
            keys += [member.name for member in tar]
    assert keys == (["v0_000000.txt", "v0_000001.txt"] + [f"v2_{i:06d}.txt" for i in range(4)]
                    + [f"v3_{i:06d}.txt" for i in range(3)])
    assert not list((tmp_path / "shards").glob("*.tmp"))


def test_untimed_transcript_without_a_duration_is_dropped_with_a_warning(trio) -> None:
    source = discover_videos(trio)[0]
    untimed = Transcript([Cue(0.0, 0.0, "some words")], "txt", timed=False)
    context, warning = VideoContext.for_video(source, 0, True, untimed, None)
    assert context.transcript.source == "none" and warning and "no duration" in warning
    context, warning = VideoContext.for_video(source, 0, True, untimed, 3.0)
    assert context.text_duration == 3.0 and warning is None


def test_output_inside_the_input_is_refused(trio, tmp_path) -> None:
    with pytest.raises(PipelineError, match="inside the input folder"):
        prepare(trio, trio / "out", TRIO_CONFIG)
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(PipelineError, match="not a folder"):
        prepare(trio, target, TRIO_CONFIG)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PipelineError, match="no videos"):
        prepare(empty, tmp_path / "out", TRIO_CONFIG)


@pytest.mark.parametrize(("workers", "cpus", "threads"),
                         [(1, 1, 1), (1, 2, 3), (2, 2, 1), (3, 2, 1), (2, 16, 9), (4, 16, 5)])
def test_decoder_threads_share_the_cpus_among_workers(workers: int, cpus: int,
                                                      threads: int) -> None:
    assert decoder_threads(workers, cpus) == threads
