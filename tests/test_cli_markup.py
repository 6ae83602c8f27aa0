"""Text the CLI did not write (paths, file names, text from files, exception messages) prints
as it is, never as rich markup: `[/x]` in a path used to stop a command with a MarkupError,
`[i]` vanished, and `[link=…]` planted a terminal hyperlink hiding the real path.
(`omni generate` is covered in test_cli_eval_generate.py, beside its checkpoint fixture.)"""

from __future__ import annotations

import pytest
from rich.markup import render
from typer.testing import CliRunner

from cli.app import app
from cli.console import plain

runner = CliRunner()
WIDE = {"COLUMNS": "400"}  # one line per message, so a path is found whole
LINK = "[link=https://example.invalid/]click[/link]"


def _invoke(args: list[str]):
    result = runner.invoke(app, args, env=WIDE)
    assert "MarkupError" not in repr(result.exception), result.exception
    return result


@pytest.mark.parametrize("text", ["shards/[/x].tar", LINK, "broken [i].mp4", "v[/i]", "end\\",
                                  "a\\[b] c\\\\", "[bold]x\\"])
@pytest.mark.parametrize("template", ["{}", "[bold]{}[/]", "{} after", "{}[red]z[/]"])
def test_plain_prints_any_text_as_it_is(text: str, template: str) -> None:
    shown = render(template.format(plain(text))).plain
    assert shown == template.replace("[bold]", "").replace("[/]", "").replace(
        "[red]", "").format(text)


def test_prepare_error_names_the_folder_as_given(tmp_path) -> None:
    result = _invoke(["prepare", str(tmp_path / "v[/i]"), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"input folder {tmp_path / 'v[/i]'} does not exist" in result.output


@pytest.mark.parametrize("name", ["shards/[/x].tar", LINK])
def test_inspect_error_names_the_shard_as_given(tmp_path, name: str) -> None:
    result = _invoke(["inspect", str(tmp_path / name)])
    assert result.exit_code == 1
    assert f"{tmp_path / name} does not exist" in result.output


def test_train_prints_paths_as_they_are(tmp_path) -> None:
    missing = _invoke(["train", "--shards", str(tmp_path / "x[/b]"), "--steps", "1",
                       "--save-dir", str(tmp_path / "unused")])
    assert missing.exit_code == 1 and str(tmp_path / "x[/b]") in missing.output
    save = tmp_path / "run [i] [/b]"
    result = _invoke(["train", "--synthetic", "--dim", "32", "--layers", "1", "--heads", "4",
                      "--batch-size", "2", "--steps", "1", "--save-dir", str(save)])
    assert result.exit_code == 0, result.output
    assert f"checkpoint {save / 'step-00000001'}" in result.output
    assert f"tensorboard --logdir {save}" in result.output


def test_eval_error_names_the_checkpoint_as_given(tmp_path) -> None:
    result = _invoke(["eval", str(tmp_path / LINK), str(tmp_path)])
    assert result.exit_code == 1 and str(tmp_path / LINK) in result.output


def test_demo_videos_prints_the_folder_as_given(tmp_path) -> None:
    out = tmp_path / "demo [i]"
    result = _invoke(["demo-videos", str(out), "--count", "1", "--duration", "1"])
    assert result.exit_code == 0, result.output
    assert f"omni prepare {out} SHARD_DIR" in result.output
