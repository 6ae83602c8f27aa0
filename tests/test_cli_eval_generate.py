"""`omni eval`, `omni generate` and evaluation during training, through the CLI on real files:
prepare with a held-out split -> train (eval records) -> eval --json -> generate every pair."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from media import make_video
from PIL import Image
from typer.testing import CliRunner

from cli.app import app
from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.checkpoint.card import CheckpointCard
from omnilatent.config import model_sizes
from omnilatent.inference.trained import load_trained
from omnilatent.training import TrainConfig, Trainer
from pipeline.config import PrepareConfig
from pipeline.generate.outputs import write_image, write_wav
from pipeline.media.discover import video_id
from pipeline.prepare.run import RunOptions, prepare
from pipeline.shards.schema import expected_from_config
from pipeline.shards.split import split_of
from pipeline.tokenizer import BYTE_VOCAB_SIZE

runner = CliRunner()
# Small clips: 8 frames of 32x32 (4 fps x 2 s), 16 mel bins x 200 frames.
PREP = PrepareConfig(fps=4, video_size=32, image_size=32, n_mels=16, eval_fraction=0.5,
                     samples_per_shard=4)
SRT = "1\n00:00:00,000 --> 00:00:09,000\nthe red circle hums\n\n"


def _names_by_split(count: int) -> list[str]:
    """File names, half of which the split puts in eval (so the test does not depend on luck)."""
    wanted = {"train": count // 2, "eval": count - count // 2}
    names = []
    for index in range(200):
        name = f"clip{index}.mp4"
        split = split_of(video_id(name), PREP.eval_fraction, PREP.split_seed)
        if wanted[split] > 0:
            wanted[split] -= 1
            names.append(name)
    return names


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("world")
    videos = base / "videos"
    videos.mkdir()
    for index, name in enumerate(_names_by_split(4)):
        make_video(videos / name, duration=3.0, size=(64, 48), tone_hz=300.0 + 200 * index)
        (videos / name).with_suffix(".srt").write_text(SRT, encoding="utf-8")
    result = prepare(videos, base / "shards", PREP, RunOptions(workers=2))
    assert result.manifest is not None
    return {"videos": videos, "shards": base / "shards", "base": base}


@pytest.fixture(scope="module")
def trained_run(world) -> Path:
    save_dir = world["base"] / "run"
    result = runner.invoke(app, [
        "train", "--shards", str(world["shards"]), "--steps", "4", "--batch-size", "2",
        "--dim", "32", "--layers", "1", "--heads", "4", "--device", "cpu",
        "--save-dir", str(save_dir), "--save-every", "2", "--eval-samples", "4"])
    assert result.exit_code == 0, result.output
    return save_dir


def test_training_evaluates_the_held_out_split_at_each_checkpoint(trained_run) -> None:
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text()
               .splitlines()]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert evals[0]["eval"]["samples"] == 4
    assert {"audio_to_video", "video_to_audio"} <= set(evals[0]["eval"]["retrieval"])


def test_checkpoint_is_self_describing(trained_run) -> None:
    trained = load_trained(trained_run)  # the newest checkpoint of the save dir
    assert trained.step == 4 and trained.card.tokenizer == "byte"
    assert trained.data_config == PREP
    assert trained.model.config.vocab_size == BYTE_VOCAB_SIZE  # sized to the tokenizer
    # a file inside a checkpoint names that checkpoint (issue 9)
    assert load_trained(trained_run / "step-00000002" / "training.pt").step == 2


def test_eval_json_has_every_documented_key(world, trained_run) -> None:
    result = runner.invoke(app, ["eval", str(trained_run), str(world["shards"]), "--json",
                                 "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["split"] == "eval" and doc["samples"] > 0
    for task in ("video_recon", "audio_to_video", "video_to_text", "temporal"):
        assert isinstance(doc["tasks"][task]["loss"], float)
    for pair in ("audio_to_video", "video_to_audio", "image_to_audio", "audio_to_image"):
        m = doc["retrieval"][pair]
        assert {"r1", "r5", "median_rank", "chance_r1"} <= set(m)
        assert m["chance_r1"] == pytest.approx(1 / doc["samples"])
    for source in ("video", "audio", "image"):
        assert {"token_accuracy", "cer"} <= set(doc["text"][f"{source}_to_text"])
    assert set(doc["reconstruction"]) == {"image", "video", "audio"}
    assert "psnr" in doc["reconstruction"]["video"] and "mel_l1" in doc["reconstruction"]["audio"]


def test_eval_human_output_and_samples_cap(world, trained_run, tmp_path) -> None:
    captions = tmp_path / "captions.jsonl"
    result = runner.invoke(app, ["eval", str(trained_run), str(world["shards"]), "--split",
                                 "all", "--samples", "5", "--label-pattern", r"clip(\d)",
                                 "--captions", str(captions)])
    assert result.exit_code == 0, result.output
    assert "5 windows evaluated" in result.output and "R@1" in result.output
    rows = [json.loads(line) for line in captions.read_text().splitlines()]
    assert len(rows) == 15 and rows[0]["reference"] == "the red circle hums"


def test_eval_refuses_a_pattern_that_does_not_match(world, trained_run) -> None:
    result = runner.invoke(app, ["eval", str(trained_run), str(world["shards"]),
                                 "--label-pattern", "nomatch"])
    assert result.exit_code == 1 and "does not match" in result.output


# --------------------------------------------------------------------------- generate
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained model saved with a card: generation only needs shapes to be right."""
    torch.manual_seed(0)
    config = OmniLatentConfig(hidden_dim=32, num_layers=1, num_heads=4,
                              vocab_size=BYTE_VOCAB_SIZE,
                              **model_sizes(expected_from_config(PREP)))
    save_dir = tmp_path_factory.mktemp("ckpt")
    trainer = Trainer(OmniLatentModel(config), TrainConfig(steps=1, save_dir=save_dir), [],
                      card=CheckpointCard(max_text_len=16, data_config=PREP.to_dict()))
    return trainer.save()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, list[str]]:
    folder = tmp_path_factory.mktemp("inputs")
    make_video(folder / "v.mp4", duration=3.0, size=(64, 48))
    tone = np.sin(2 * np.pi * 440 * np.arange(24000) / 16000).astype(np.float32)
    write_wav(folder / "a.wav", 0.5 * tone, 16000)
    write_image(folder / "i.png", np.full((40, 60, 3), 120, dtype=np.uint8))
    (folder / "t.txt").write_text("the red circle hums\n", encoding="utf-8")
    return {"video": ["--from", str(folder / "v.mp4"), "--start", "1"],
            "audio": ["--from", str(folder / "a.wav")],
            "image": ["--from", str(folder / "i.png")],
            "text file": ["--from", str(folder / "t.txt")],
            "text": ["--text", "the green square beeps"]}


def _check_output(path: Path, target: str) -> None:
    if target == "text":
        assert path.read_text(encoding="utf-8").endswith("\n")
    elif target == "image":
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (32, 32)
    elif target == "audio":
        with wave.open(str(path)) as wav:
            assert wav.getframerate() == 16000 and wav.getnchannels() == 1
            assert wav.getnframes() == PREP.audio_frames * PREP.hop_length  # one 2 s clip
    elif path.suffix == ".gif":
        with Image.open(path) as gif:
            assert gif.size == (32, 32) and gif.n_frames == PREP.video_frames
    else:
        with av.open(str(path)) as container:
            frames = list(container.decode(video=0))
        assert len(frames) == PREP.video_frames and frames[0].width == 32


@pytest.mark.parametrize("source", ["video", "audio", "image", "text file", "text"])
@pytest.mark.parametrize("target,suffix", [("text", ".txt"), ("image", ".png"),
                                           ("audio", ".wav"), ("video", ".mp4"),
                                           ("video", ".gif")])
def test_generate_every_input_to_every_output(checkpoint, inputs, tmp_path, source, target,
                                              suffix) -> None:
    out = tmp_path / f"out{suffix}"
    result = runner.invoke(app, ["generate", str(checkpoint), *inputs[source], "--to", target,
                                 "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output.replace("\n", "")
    _check_output(out, target)


def test_generate_reads_any_part_of_a_video(checkpoint, inputs, tmp_path) -> None:
    video = inputs["video"][1]
    for modality in ("audio", "image"):
        out = tmp_path / f"{modality}.png"
        result = runner.invoke(app, ["generate", str(checkpoint), "--from", video,
                                     "--from-modality", modality, "--to", "image", "--out",
                                     str(out)])
        assert result.exit_code == 0, result.output
        assert f"({modality} -> image" in result.output


def test_generate_reads_the_sound_of_a_video_file_without_pictures(checkpoint,
                                                                   tmp_path) -> None:
    """Issue 20, §3: an .mp4 holding only sound, asked for its sound, is read as audio (it
    was refused: "no video stream")."""
    sound = make_video(tmp_path / "audio_only.mp4", duration=3.0, video=False).path
    out = tmp_path / "from-sound.png"
    result = runner.invoke(app, ["generate", str(checkpoint), "--from", str(sound),
                                 "--from-modality", "audio", "--to", "image", "--out",
                                 str(out), "--device", "cpu"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "(audio -> image" in result.output
    _check_output(out, "image")


@pytest.mark.parametrize("args,code,message", [
    (["--text", "hi", "--to", "audio", "--out", "x.mp3"], 1, "ending in .wav"),
    (["--text", "hi", "--to", "smell", "--out", "x.txt"], 2, "--to must be one of"),
    (["--to", "text", "--out", "x.txt"], 2, "exactly one input"),
    (["--from", "missing.mp4", "--to", "text", "--out", "x.txt"], 1, "missing.mp4"),
    (["--from", "notes.xyz", "--to", "text", "--out", "x.txt"], 1, "--from-modality"),
])
def test_generate_bad_input_is_one_clear_line(checkpoint, tmp_path, monkeypatch, args, code,
                                              message) -> None:
    monkeypatch.chdir(tmp_path)  # the relative names above live here
    (tmp_path / "notes.xyz").write_text("?")
    result = runner.invoke(app, ["generate", str(checkpoint), *args],
                           env={"COLUMNS": "200"}, catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output


def test_a_checkpoint_of_another_version_is_refused(checkpoint, tmp_path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for item in checkpoint.iterdir():
        (old / item.name).write_bytes(item.read_bytes())
    state = json.loads((old / "state.json").read_text())
    state["format"] = 1
    (old / "state.json").write_text(json.dumps(state))
    result = runner.invoke(app, ["generate", str(old), "--text", "hi", "--to", "text",
                                 "--out", str(tmp_path / "x.txt")])
    assert result.exit_code == 1 and "format 1 is not supported" in result.output


def test_saved_hooks_are_registered_before_generating(checkpoint, tmp_path) -> None:
    from omnilatent.model.hooks import LatentNeuralHook

    hook = LatentNeuralHook("style", num_tokens=2, dim=32, target_layers=[0])
    hook.save(tmp_path / "style")
    assert "style" in load_trained(checkpoint, hooks=[tmp_path / "style"]).model.hooks
    plain, hooked = tmp_path / "plain.png", tmp_path / "hooked.png"
    for out, extra in ((plain, []), (hooked, ["--hook", str(tmp_path / "style")])):
        result = runner.invoke(app, ["generate", str(checkpoint), "--text", "a red circle",
                                     "--to", "image", "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
    assert plain.read_bytes() != hooked.read_bytes()  # the hook took part
    wrong = LatentNeuralHook("wide", num_tokens=2, dim=64, target_layers=[0])
    wrong.save(tmp_path / "wide")
    result = runner.invoke(app, ["generate", str(checkpoint), "--text", "x", "--to", "text",
                                 "--out", str(tmp_path / "x.txt"), "--hook",
                                 str(tmp_path / "wide")])
    assert result.exit_code == 1 and "dim 64" in result.output


def test_a_sentencepiece_model_travels_inside_the_checkpoint(tmp_path) -> None:
    """The tokenizer file is copied in and hashed like the weights: eval and generate need
    nothing else, and a damaged copy is caught."""
    from omnilatent.checkpoint.files import verify_checkpoint
    from omnilatent.errors import CheckpointError

    source = tmp_path / "spm.model"
    source.write_bytes(b"not really a sentencepiece model")
    config = OmniLatentConfig(hidden_dim=32, num_layers=1, num_heads=4,
                              **model_sizes(expected_from_config(PREP)))
    card = CheckpointCard(tokenizer="sentencepiece", max_text_len=16,
                          data_config=PREP.to_dict(), tokenizer_source=source)
    path = Trainer(OmniLatentModel(config), TrainConfig(steps=1, save_dir=tmp_path / "run"),
                   [], card=card).save()
    state = verify_checkpoint(path)
    assert (path / "tokenizer.model").read_bytes() == source.read_bytes()
    assert state["card"]["tokenizer_file"] == "tokenizer.model"
    assert "tokenizer.model" in state["files"]
    (path / "tokenizer.model").write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        verify_checkpoint(path)


# --------------------------------------------------------------------------- hostile names
def test_generate_prints_paths_as_they_are_not_as_markup(checkpoint, tmp_path) -> None:
    """`[/bold]` in a name used to stop the command with a MarkupError, `[i]` vanished."""
    broken = tmp_path / "broken [i].mp4"
    broken.write_bytes(b"\x00not a video" * 20)
    out = ["--to", "text", "--out", str(tmp_path / "x.txt")]
    for args, shown in (
            (["--from", str(tmp_path / "x[/bold].mp4"), *out], tmp_path / "x[/bold].mp4"),
            (["--from", str(broken), *out], broken),
            (["--text", "hi", "--hook", str(tmp_path / "x[/b]"), *out], tmp_path / "x[/b]")):
        result = runner.invoke(app, ["generate", str(checkpoint), *args],
                               env={"COLUMNS": "400"})
        assert result.exit_code == 1, (result.exception, result.output)
        assert str(shown) in result.output


@pytest.mark.parametrize("target,suffix", [("text", ".txt"), ("image", ".png"),
                                           ("audio", ".wav"), ("video", ".gif"),
                                           ("video", ".mp4")])
def test_an_out_symlink_is_replaced_not_written_through(checkpoint, tmp_path, target,
                                                        suffix) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / f"out{suffix}"
    out.symlink_to(victim)
    result = runner.invoke(app, ["generate", str(checkpoint), "--text", "hi", "--to", target,
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious\n" and not out.is_symlink()
    _check_output(out, target)


def test_a_text_output_over_the_size_limit_leaves_the_old_file(checkpoint, tmp_path) -> None:
    """Under RLIMIT_FSIZE 0 no byte can be written: the old caption stays whole (it used to
    be truncated to nothing) and no temporary file is left."""
    import os
    import resource
    import subprocess
    import sys

    out = tmp_path / "caption.txt"
    out.write_text("the old caption\n")

    def no_file_growth() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    run = subprocess.run(
        [sys.executable, "-m", "cli.app", "generate", str(checkpoint), "--text", "hi", "--to",
         "text", "--out", str(out), "--device", "cpu"],
        preexec_fn=no_file_growth, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "400"})
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"cannot write {out}" in run.stdout
    assert out.read_text() == "the old caption\n"
    assert [path.name for path in tmp_path.iterdir()] == ["caption.txt"]


@pytest.mark.parametrize("where", ["missing/captions.jsonl", "."])
def test_eval_checks_the_captions_path_before_evaluating(tmp_path, monkeypatch, where) -> None:
    import omnilatent.inference.trained

    def never(*_args, **_kwargs):
        raise AssertionError("the checkpoint was loaded before --captions was checked")

    monkeypatch.setattr(omnilatent.inference.trained, "load_trained", never)
    result = runner.invoke(app, ["eval", str(tmp_path), str(tmp_path), "--captions",
                                 str(tmp_path / where)], env={"COLUMNS": "400"})
    assert result.exit_code == 1, (result.exception, result.output)
    assert f"cannot write {tmp_path / where}" in result.output


def test_label_pattern_runs_in_linear_time(tmp_path) -> None:
    """`^(a|aa)+$` backtracks exponentially in Python's re (32 s on 41 characters); RE2 answers
    at once on 100 000. Run apart, so that a matcher that backtracks fails instead of hanging
    the suite."""
    import subprocess
    import sys

    code = ("from omnilatent.evaluation.evaluate import source_labeller\n"
            "from omnilatent.errors import UsageError\n"
            "label = source_labeller('^(a|aa)+$')\n"
            "assert label({'source': 'a' * 6}) == 'a'\n"
            "try:\n"
            "    label({'source': 'a' * 100_000 + 'b'})\n"
            "except UsageError as err:\n"
            "    print('refused:', str(err)[:40])\n")
    try:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the label pattern is still running after 120 s")
    assert run.returncode == 0, run.stderr
    assert "refused: --label-pattern '^(a|aa)+$' does not" in run.stdout


def test_label_pattern_refuses_what_re2_cannot_bound(tmp_path) -> None:
    result = runner.invoke(app, ["eval", str(tmp_path), str(tmp_path), "--label-pattern",
                                 r"(clip)\1"], env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "not a regular expression RE2 reads" in result.output
    assert "backreferences" in result.output
