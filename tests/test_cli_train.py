from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from rich.console import Console
from rich.progress import Progress
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from cli.app import app
from cli.console import console
from cli.errors import run_command
from cli.train_display import RichCallbacks, eval_line, print_summary, progress_bar
from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.checkpoint.files import load_checkpoint, save_checkpoint
from omnilatent.errors import OmniLatentError
from omnilatent.training import TrainConfig, TrainResult
from omnilatent.training.curriculum import DEFAULT_SCHEDULE, CurriculumTrainer
from pipeline.lock import FolderLock

runner = CliRunner()
TINY_ARGS = ["--synthetic", "--dim", "32", "--layers", "1", "--heads", "4", "--batch-size", "2"]


def test_help_lists_commands_and_examples() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "train" in result.output
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("omni ")
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for text in ("Examples", "--synthetic", "--resume", "--grad-checkpointing", "--no-amp"):
        assert text in result.output


def test_train_synthetic_end_to_end(tmp_path) -> None:
    save = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY_ARGS, "--steps", "4", "--log-interval", "2",
                                 "--save-dir", str(save)])
    assert result.exit_code == 0, result.output
    assert (save / "step-00000004" / "model.safetensors").is_file()
    records = [json.loads(x) for x in (save / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert "training summary" in result.output and str(save / "metrics.jsonl") in result.output


def test_an_in_process_run_gives_the_signal_handlers_back(tmp_path) -> None:
    """Issue 16: `omni train` run in-process (as these tests do) leaves SIGINT and SIGTERM
    handled as before it, so pytest still stops on SIGTERM; also when the run fails."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    result = runner.invoke(app, ["train", *TINY_ARGS, "--steps", "1", "--save-dir",
                                 str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    refused = runner.invoke(app, ["train", *TINY_ARGS, "--steps", "1", "--save-dir",
                                  str(tmp_path / "run")])  # holds checkpoints: refused
    assert refused.exit_code == 2
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_train_without_data_source_is_a_usage_error(tmp_path) -> None:
    result = runner.invoke(app, ["train", "--steps", "1", "--save-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "choose exactly one data source" in result.output


def test_bad_model_shape_is_a_usage_error_naming_the_options(tmp_path) -> None:
    """Issue 20, §3: the options' names, not the config's fields; exit 2 as a bad option,
    without the debug hint a real failure gets."""
    result = runner.invoke(app, ["train", "--synthetic", "--dim", "30", "--heads", "4",
                                 "--save-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--dim (30) must be divisible by --heads (4)" in result.output
    assert "hidden_dim" not in result.output and "OMNI_DEBUG" not in result.output
    assert "Traceback" not in result.output
    odd = runner.invoke(app, ["train", "--synthetic", "--dim", "36", "--heads", "4",
                              "--save-dir", str(tmp_path)])
    assert odd.exit_code == 2 and "--dim/--heads = 9 must be even" in odd.output


@pytest.mark.parametrize(("args", "named"), [
    (["--phase-schedule", "warmup=0.5,crossmodal=0.2"], "--phase-schedule warmup=0.5,"),
    (["--phase-schedule", "nosuch.toml"], "--phase-schedule nosuch.toml: schedule file"),
    (["--warmup-frac", "0.9", "--crossmodal-frac", "0.5"], "--warmup-frac 0.9 --crossmodal"),
])
def test_a_schedule_that_cannot_be_made_is_a_usage_error(tmp_path, args, named) -> None:
    result = runner.invoke(app, ["train", *TINY_ARGS, *args, "--save-dir", str(tmp_path)],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert named in result.output and "OMNI_DEBUG" not in result.output
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_real_failure_keeps_the_debug_hint() -> None:
    def refused() -> None:
        raise OmniLatentError("the data is bad")

    with console.capture() as captured, pytest.raises(typer.Exit) as exit_info:
        run_command(refused)
    assert exit_info.value.exit_code == 1 and "OMNI_DEBUG=1" in captured.get()


def test_existing_checkpoints_need_resume(tmp_path) -> None:
    args = ["train", *TINY_ARGS, "--steps", "2", "--save-dir", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume auto" in again.output
    # issue 20, §2: refused before the run's set-up is shown
    assert again.output.lstrip().startswith("Error:"), again.output
    assert "tensorboard:" not in again.output and "data:" not in again.output
    resumed = runner.invoke(app, [*args[:-4], "--steps", "3", "--save-dir", str(tmp_path),
                                  "--resume", "auto"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from" in resumed.output and (tmp_path / "step-00000003").is_dir()


def _omni(*args: str) -> list[str]:
    return [sys.executable, "-c", "from cli.app import main; main()", *args]


def test_killed_run_resumes_to_identical_parameters(tmp_path) -> None:
    """SIGKILL mid-run, then --resume auto: same weights as an uninterrupted run."""
    common = [*TINY_ARGS, "--steps", "40", "--save-every", "5", "--log-interval", "1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    straight = subprocess.run(_omni("train", *common, "--save-dir", str(tmp_path / "a")),
                              env=env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stdout + straight.stderr

    proc = subprocess.Popen(_omni("train", *common, "--save-dir", str(tmp_path / "b")),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (tmp_path / "b" / "step-00000010").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "step-00000040").exists()

    resumed = subprocess.run(_omni("train", *common, "--save-dir", str(tmp_path / "b"),
                                   "--resume", "auto"),
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a = load_file(str(tmp_path / "a" / "step-00000040" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "step-00000040" / "model.safetensors"))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    losses = [[(r["step"], r["loss"]) for r in map(json.loads, Path(p).read_text().splitlines())]
              for p in (tmp_path / "a" / "metrics.jsonl", tmp_path / "b" / "metrics.jsonl")]
    assert losses[0] == losses[1] and len(losses[0]) == 40


def test_sigterm_checkpoints_the_current_step(tmp_path) -> None:
    save = tmp_path / "c"
    proc = subprocess.Popen(_omni("train", *TINY_ARGS, "--steps", "100000", "--save-dir",
                                  str(save)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (save / "metrics.jsonl").exists() or not (save / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    checkpoints = list(save.glob("step-*"))
    assert len(checkpoints) == 1 and "interrupted" in output


def test_without_a_data_source_torch_is_not_even_imported() -> None:
    """Issue 9, item 9: the usage error comes before the seconds torch takes to import."""
    code = ("import sys; from typer.testing import CliRunner; from cli.app import build_app; "
            "r = CliRunner().invoke(build_app(['train']), ['train', '--steps', '1']); "
            "print(r.exit_code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr


def test_resume_accepts_a_file_inside_the_checkpoint(tmp_path) -> None:
    args = ["train", *TINY_ARGS, "--save-dir", str(tmp_path)]
    assert runner.invoke(app, [*args, "--steps", "2"]).exit_code == 0
    resumed = runner.invoke(app, [*args, "--steps", "3", "--resume",
                                  str(tmp_path / "step-00000002" / "training.pt")])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from" in resumed.output and (tmp_path / "step-00000003").is_dir()


def test_a_checkpoint_with_garbage_state_is_skipped_or_one_error_line(tmp_path) -> None:
    """Issue 9, item 5: `--resume auto` passes over it and says why; naming it is an error
    message, not a traceback."""
    args = ["train", *TINY_ARGS, "--save-dir", str(tmp_path), "--save-every", "1",
            "--keep-last", "0"]
    assert runner.invoke(app, [*args, "--steps", "2"]).exit_code == 0
    loaded = load_checkpoint(tmp_path / "step-00000002")
    state = {k: v for k, v in loaded.state.items()
             if k not in ("format", "step", "files", "state_sha256")}
    state["rng"]["numpy"][2] = 10**6  # an MT position far past its 624 words
    shutil.rmtree(tmp_path / "step-00000002")
    save_checkpoint(tmp_path, 2, loaded.model_state, loaded.training_state, state)

    named = runner.invoke(app, [*args, "--steps", "3", "--resume",
                                str(tmp_path / "step-00000002")])
    assert named.exit_code == 1 and "Error:" in named.output and "rng.numpy" in named.output
    assert named.exception is None or isinstance(named.exception, SystemExit)
    refused = runner.invoke(app, [*args, "--steps", "3", "--resume", "auto"],
                            env={"COLUMNS": "400"})
    assert refused.exit_code == 2, refused.output  # it would overwrite step-00000002
    assert "step-00000002" in refused.output and "rng.numpy" in refused.output
    assert "move them aside" in refused.output
    (tmp_path / "step-00000002").rename(tmp_path / "step-00000002.unusable")
    auto = runner.invoke(app, [*args, "--steps", "3", "--resume", "auto"],
                         env={"COLUMNS": "400"})
    assert auto.exit_code == 0, auto.output
    assert "at step 1" in auto.output


def test_a_save_dir_in_use_by_another_run_is_refused(tmp_path) -> None:
    """Issue 9, item 6: the second run stops at once, naming the first one's pid."""
    with FolderLock(tmp_path):
        result = runner.invoke(app, ["train", *TINY_ARGS, "--steps", "1", "--save-dir",
                                     str(tmp_path)], env={"COLUMNS": "400"})
    assert result.exit_code == 1
    assert f"another run (pid {os.getpid()}) is using {tmp_path}" in result.output
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_plain_value_error_is_one_error_line(tmp_path) -> None:
    """Issue 9, item 9: a ValueError from a library (braceexpand's, for an unbalanced --shards
    pattern, before the loader turned it into a ConfigError) is rendered, not a traceback."""
    def fail() -> None:
        raise ValueError("Unbalanced braces in pattern")

    with pytest.raises(typer.Exit) as exit_info:
        run_command(fail)
    assert exit_info.value.exit_code == 1
    result = runner.invoke(app, ["train", "--shards", str(tmp_path / "{a,b"), "--dim", "32",
                                 "--layers", "1", "--heads", "4", "--save-dir",
                                 str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "Error:" in result.output and "not a shard pattern" in result.output
    assert isinstance(result.exception, SystemExit)


def test_log_lines_and_summary_show_dropped_samples(tmp_path) -> None:
    """Issue 9, item 7: the loader's counters in the summary, with a warning past 1 %."""
    counters = {"samples": 2, "dropped": 8, "unsafe_members": 0, "corrupt_shards": 1,
                "surplus_shards": 0}
    record = {"step": 4, "loss": 1.0, "losses": {"video_to_audio": 1.0}, "lr": 1e-3,
              "tokens_per_s": 10.0, "samples_per_s": 1.0, "skipped_batches": 0,
              "data": counters}
    result = TrainResult(step=4, interrupted=False, last_checkpoint=None, data=counters)
    with console.capture() as captured:
        RichCallbacks(Progress(console=console), 4, 2).on_log(record)
        print_summary([record], tmp_path, result)
    line, *summary = captured.get().splitlines()
    assert line.startswith("step       4") and "data: 2 samples, 8 dropped (80.0%)" in line
    assert any(text.startswith("warning: data: 2 samples, 8 dropped (80.0%), 1 corrupt shards")
               for text in summary)


def _tiny_curriculum_trainer() -> CurriculumTrainer:
    """A curriculum trainer that is never run: what the display reads at the start."""
    model = OmniLatentModel(OmniLatentConfig(hidden_dim=32, num_layers=1, num_heads=4))
    config = TrainConfig(steps=40, device="cpu", log_interval=4)
    return CurriculumTrainer(model, config, [], schedule=DEFAULT_SCHEDULE)


def test_bar_says_what_it_does_then_phase_smoothed_loss_and_rates() -> None:
    """Issue 10: before the first step the bar says what it waits for; then it shows the
    phase, the latest record's loss (the mean of the last log_interval steps, not one
    task's), steps/s and samples/s."""
    progress = progress_bar()
    callbacks = RichCallbacks(progress, 40, samples_per_step=8)
    screen = Console(width=200, record=True)
    with console.capture():
        callbacks.on_start(_tiny_curriculum_trainer())
    screen.print(progress.get_renderable())
    assert "first step: loading data…" in screen.export_text()
    for step in range(1, 6):
        callbacks.on_step(step, 40, "video_to_audio")
        if step == 4:
            with console.capture():
                callbacks.on_log({"step": 4, "loss": 1.37, "losses": {}, "lr": 1e-3,
                                  "samples_per_s": 8.0, "tokens_per_s": 80.0})
    screen.print(progress.get_renderable())
    bar = screen.export_text()
    assert "warmup | loss 1.3700 |" in bar  # the record's window mean
    assert re.search(r"\| (\d+\.\d\d) steps/s \| (\d+\.\d) samples/s", bar)


def test_summary_shows_a_mean_row_per_phase(tmp_path) -> None:
    records = [{"step": step, "loss": loss, "losses": {"video_to_audio": loss}, "phase": phase}
               for step, loss, phase in ((4, 2.0, "warmup"), (8, 1.0, "warmup"),
                                         (12, 3.0, "joint"), (16, 2.5, "joint"))]
    with console.capture() as captured:
        print_summary(records, tmp_path, TrainResult(16, False, None))
    text = captured.get()
    assert re.search(r"phase warmup \(window mean\).*2\.0000 \(step 4\).*1\.0000 \(step 8\)",
                     text)
    assert re.search(r"phase joint \(window mean\).*3\.0000 \(step 12\).*2\.5000 \(step 16\)",
                     text)
    assert "all (window mean)" not in text


def test_log_lines_do_not_wrap_on_a_narrow_console(tmp_path, monkeypatch) -> None:
    """Piped output is 80 columns wide to rich: each record must stay one line."""
    callbacks = RichCallbacks(progress_bar(), 40, 2)
    record = {"step": 4, "loss": 1.0, "losses": {}, "lr": 1e-3, "tokens_per_s": 10.0,
              "samples_per_s": 1.0, "skipped_batches": 0, "phase": "crossmodal"}
    # The shared console's width is left unset (sized from the terminal or COLUMNS); setting
    # it through the property would pin it for every later test.
    monkeypatch.setattr(console, "_width", 40)
    with console.capture() as captured:
        callbacks.on_start(_tiny_curriculum_trainer())
        callbacks.on_log(record)
        callbacks.on_event("resuming with changed settings: lr 0.0006 -> 0.0003, steps 40")
        callbacks.on_checkpoint(tmp_path / "a-rather-long-folder-name" / "step-00000004")
        callbacks.on_eval({"step": 4, "eval": {"samples": 8, "retrieval": {
            "audio_to_video": {"r1": 0.5, "chance_r1": 0.125}}}})
    lines = captured.get().splitlines()
    assert len(lines) == 5 and all(len(line) > 40 for line in lines), lines


def test_help_groups_options_under_headings() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    headings = ["Data", "Model", "Curriculum", "Optimisation", "Checkpoints and evaluation",
                "Runtime"]
    positions = [result.output.find(f"─ {name} ─") for name in headings]
    assert -1 not in positions and positions == sorted(positions), positions
    data = result.output[positions[0]:positions[1]]
    assert "--shards" in data and "--workers" in data and "--dim" not in data


def test_train_writes_tensorboard_events_without_duplicates_on_resume(tmp_path) -> None:
    """Issue 10: events in the save dir, the `tensorboard --logdir` command printed; a run
    killed after logging step 4 but before its checkpoint resumes from step 2 without
    logging steps 3-4 twice."""
    args = ["train", *TINY_ARGS, "--log-interval", "1", "--save-every", "2", "--keep-last",
            "0", "--save-dir", str(tmp_path)]
    first = runner.invoke(app, [*args, "--steps", "4"], env={"COLUMNS": "400"})
    assert first.exit_code == 0, first.output
    assert f"tensorboard --logdir {tmp_path}" in first.output
    shutil.rmtree(tmp_path / "step-00000004")
    resumed = runner.invoke(app, [*args, "--steps", "4", "--resume", "auto"])
    assert resumed.exit_code == 0, resumed.output
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"loss/all", "lr", "throughput/samples_per_s", "throughput/tokens_per_s"} <= set(
        events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss/all")] == [1, 2, 3, 4]


def test_eval_line_says_what_each_figure_ranks() -> None:
    """Issue 20, §2: R@1 by class (`--label-pattern`, the README's headline) and R@1 of the
    window itself are told apart, and tasks carry their one name."""
    metrics = {"samples": 78, "retrieval": {"audio_to_video": {"r1": 0.1, "chance_r1": 0.0128}},
               "retrieval_by_label": {"audio_to_video": {"r1": 1.0, "chance_r1": 0.125}},
               "text": {"audio_to_text": {"token_accuracy": 0.9, "cer": 0.05}}}
    assert eval_line(metrics) == (
        "78 windows | audio_to_video R@1 1.00 by class (chance 0.12), 0.10 of the window "
        "itself (chance 0.01) | audio_to_text token acc 0.90 CER 0.05")
    del metrics["retrieval_by_label"]
    assert "audio_to_video R@1 0.10 of the window itself (chance 0.01)" in eval_line(metrics)


def test_summary_does_not_repeat_the_loss_of_a_task_logged_once(tmp_path) -> None:
    """Issue 20, §2: a task seen in one log window has no last loss to set beside its first."""
    records = [{"step": 32, "loss": 1.0, "losses": {"audio_to_image": 0.2376,
                                                    "video_to_audio": 2.0}},
               {"step": 40, "loss": 0.9, "losses": {"video_to_audio": 1.5}}]
    with console.capture() as captured:
        print_summary(records, tmp_path, TrainResult(40, False, None))
    rows = {line.split("│")[1].strip(): line for line in captured.get().splitlines()
            if line.count("│") >= 3}
    assert "logged once" in rows["audio_to_image"]
    assert rows["audio_to_image"].count("0.2376") == 1
    assert "2.0000 (step 32)" in rows["video_to_audio"]
    assert "1.5000 (step 40)" in rows["video_to_audio"]


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("command", [[], ["prepare"], ["train"], ["eval"], ["generate"],
                                     ["inspect"], ["demo-videos"], ["demo"]])
def test_help_reflows_at_any_width(command, columns) -> None:
    """Issue 20, §3: help paragraphs wrap at the terminal's width, not at the docstring's
    line breaks ("Stop with Ctrl-C or⏎SIGTERM"): in the description under Usage, every line
    of a paragraph but its last is filled to near the width."""
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if "Usage:" in line) + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("╭"))
    paragraphs = "\n".join(line.rstrip() for line in lines[start:end]).strip().split("\n\n")
    for paragraph in paragraphs:
        *filled, _ = paragraph.splitlines()
        assert all(len(line) > columns - 20 for line in filled), paragraph
    listed = "\n".join(lines[end:])
    if not command:  # each command listed by its help's first sentence
        assert "Train OmniLatent on prepared shards, raw videos or synthetic" in listed
        assert "Stop with Ctrl-C" not in listed


def test_train_help_describes_every_option_in_full() -> None:
    """Issue 20, §3: --layers, --heads and --batch-size say what they are, the
    --phase-schedule example is not cut, and the default model's size is the counted one."""
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "80"})
    text = " ".join(result.output.replace("│", " ").split())
    for described in ("--layers <int range> [x>=1] Transformer blocks.",
                      "--heads <int range> [x>=1] Attention heads;",
                      "Samples per batch", "e.g. warmup=0.2,joint=0.8;"):
        assert described in text, described
    schedule = text[text.index("--phase-schedule"):text.index("--warmup-frac")]
    assert "…" not in schedule and "140M" not in text
    counted = OmniLatentModel(OmniLatentConfig(vocab_size=259)).num_parameters() / 1e6
    assert f"{counted:.2f}M parameters with byte-level text" in text
