"""`omni prepare` through Typer's CliRunner: help, output modes, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from media import make_video, random_bytes_file
from typer.testing import CliRunner

from cli.app import app
from pipeline.lock import FolderLock

runner = CliRunner()
FAST = ["--workers", "2", "--videos-per-unit", "2"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_videos")
    make_video(root / "good.mp4", duration=3.0, size=(64, 48))
    (root / "good.srt").write_text("1\n00:00:00,500 --> 00:00:01,000\nhi\n", encoding="utf-8")
    make_video(root / "tiny.mp4", duration=1.0, size=(64, 48))
    random_bytes_file(root / "bad.mkv", 4096)
    return root


def test_help_has_the_options_and_examples() -> None:
    result = runner.invoke(app, ["prepare", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for text in ("Examples", "--clip-duration", "--part", "--overwrite", "--strict", "--json",
                 "--decoder", "--samples-per-shard", "--workers", "CPU count",
                 "--eval-fraction", "--split-seed", "--follow-symlinks"):
        assert text in result.output, text


@pytest.mark.parametrize("commands", [["prepare"], ["inspect"], None])
def test_commands_start_without_importing_torch(commands: list[str] | None) -> None:
    # torch takes seconds to import. `omni prepare` never needs it (nor do its workers: see
    # test_torch_free.py), `omni inspect` reads tars with numpy, PIL and PyAV, and `omni --help`
    # (None: every command) only lists options; `omni train` imports it when it runs.
    names = "" if commands is None else repr(commands)
    code = (f"import sys; from cli.app import build_app; build_app({names}); "
            "print(sorted(name for name in ('torch', 'webdataset') if name in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_human_output_summarises_and_lists_failures(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["prepare", str(videos), str(out), *FAST],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("prepare summary", "1 prepared", "1 failed", "1 skipped", "bad.mkv",
                 "not a readable media file", "shorter than one clip", "manifest:",
                 # tiny.mp4 falls into the eval split at the default 0.05, but is too short
                 "eval split", "1 video (0 prepared), 0 clips in 0 shards",
                 "the eval split holds no prepared video", "pass a larger --eval-fraction"):
        assert text in result.output, text
    again = runner.invoke(app, ["prepare", str(videos), str(out), *FAST],
                          env={"COLUMNS": "200"})
    assert again.exit_code == 0 and "2 already done (skipped)" in again.output


def test_json_prints_one_document(videos: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", str(videos), str(tmp_path / "out"), *FAST,
                                 "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["totals"]["prepared"] == 1 and document["totals"]["clips"] == 2
    assert document["totals"]["failed"] == 1 and document["manifest"].endswith("manifest.json")
    status = {video["source"]: video["status"] for video in document["videos"]}
    assert status == {"bad.mkv": "failed", "good.mp4": "prepared", "tiny.mp4": "skipped"}
    assert {video["source"]: video["split"] for video in document["videos"]} == {
        "bad.mkv": "train", "good.mp4": "train", "tiny.mp4": "eval"}
    held, trained = document["splits"]["eval"], document["splits"]["train"]
    assert (held["videos"], held["skipped"], held["clips"]) == (1, 1, 0)
    assert (trained["prepared"], trained["clips"]) == (1, 2)


def test_strict_fails_when_a_video_failed(videos: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", str(videos), str(tmp_path / "out"), *FAST,
                                 "--strict", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["totals"]["failed"] == 1


@pytest.mark.parametrize("case", ["file", "inside"])
def test_unusable_output_folder_exits_non_zero(videos: Path, tmp_path: Path, case: str) -> None:
    if case == "file":
        out = tmp_path / "a-file"
        out.write_text("not a folder")
    else:
        out = videos / "out"
    result = runner.invoke(app, ["prepare", str(videos), str(out), *FAST])
    assert result.exit_code == 1
    assert "Error:" in result.output
    assert not (videos / "out").exists()


@pytest.mark.parametrize("args", [["--part", "3/2"], ["--part", "x"], ["--decoder", "vlc"],
                                  ["--clip-duration", "0.3"]])
def test_bad_arguments_are_usage_errors(videos: Path, tmp_path: Path, args: list[str]) -> None:
    result = runner.invoke(app, ["prepare", str(videos), str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert "Error:" in result.output


def test_eval_fraction_outside_zero_one_is_refused(videos: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", str(videos), str(tmp_path / "out"),
                                 "--eval-fraction", "1.5"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "eval_fraction" in result.output and "must lie in [0, 1), got 1.5" in result.output
    assert not (tmp_path / "out").exists()


def test_changed_settings_are_refused_without_overwrite(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert runner.invoke(app, ["prepare", str(videos), str(out), *FAST]).exit_code == 0
    refused = runner.invoke(app, ["prepare", str(videos), str(out), *FAST, "--fps", "4"],
                            env={"COLUMNS": "200"})
    assert refused.exit_code == 1 and "fps: 8 -> 4" in refused.output
    assert "--overwrite" in refused.output
    redone = runner.invoke(app, ["prepare", str(videos), str(out), *FAST, "--fps", "4",
                                 "--overwrite", "--json"])
    assert redone.exit_code == 0, redone.output
    assert json.loads(redone.stdout)["units"]["prepared_now"] == 2


def test_a_second_run_into_a_folder_in_use_names_the_first(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with FolderLock(out):  # as the first run holds it
        result = runner.invoke(app, ["prepare", str(videos), str(out), *FAST],
                               env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert f"another run (pid {os.getpid()}) is using {out}" in result.output
    assert "free some space" not in result.output
    assert not list((out / "stats").iterdir())
    again = runner.invoke(app, ["prepare", str(videos), str(out), *FAST, "--json"])
    assert again.exit_code == 0, again.output  # the lock went with its holder


def test_an_output_folder_of_other_things_is_a_usage_error(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    result = runner.invoke(app, ["prepare", str(videos), str(out), *FAST],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "already holds other things (notes.md)" in result.output
    assert sorted(path.name for path in out.iterdir()) == ["notes.md"]


def test_a_missing_input_folder_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", str(tmp_path / "no-such-folder"),
                                 str(tmp_path / "out")], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "no-such-folder does not exist" in result.output
    assert not (tmp_path / "out").exists()
