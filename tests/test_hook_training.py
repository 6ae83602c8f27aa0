"""Training a Latent Neural Hook on a frozen model (`omni train --from CHECKPOINT --hook NAME
--freeze-base`): a hook learns a task its base never trained on while the base stays bit for
bit; the hook is saved alone, loads where `omni eval`/`generate --hook` load it, and a
stopped run resumes exactly; contradicting options are usage errors naming what is wrong."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cli.app import app
from omnilatent import MODALITIES, OmniLatentConfig, OmniLatentModel
from omnilatent.checkpoint.card import CheckpointCard
from omnilatent.errors import UsageError
from omnilatent.inference.trained import load_trained
from omnilatent.model.hooks import LatentNeuralHook
from omnilatent.training import SyntheticMultimodalDataset, TrainConfig, build_dataloader
from omnilatent.training.curriculum import CurriculumTrainer, Phase, Schedule
from omnilatent.training.data import collate_multimodal
from omnilatent.training.hook_training import HookSpec, StartOptions, parse_hook_spec
from omnilatent.training.rng import seed_everything
from omnilatent.training.run import (
    DataOptions,
    ModelOptions,
    TrainRunOptions,
    build_run,
    run_training,
)

runner = CliRunner()
# conftest's TINY with the byte tokenizer's vocabulary, which a run from the card uses
TINY = OmniLatentConfig(hidden_dim=32, num_layers=2, num_heads=4, vocab_size=259, n_mels=16,
                        audio_frames=24, image_size=32, patch_size=16, video_size=32,
                        video_frames=8)
NEW_TASK = Schedule((Phase("hook", {"audio_to_image": 1.0}, share=1.0),))


def _one_task(name: str) -> Schedule:
    return Schedule((Phase("base", {name: 1.0}, share=1.0),))


def _hook_run(base: Path, save_dir: Path, steps: int, *, hooks: tuple[HookSpec, ...] = (
        HookSpec("a2i"),), freeze: bool = True, **train) -> TrainRunOptions:
    """A hook trained on audio->image over synthetic data, from ``base``."""
    settings = {"steps": steps, "lr": 0.1, "device": "cpu", "log_interval": 2,
                "save_dir": save_dir, **train}
    return TrainRunOptions(DataOptions("synthetic", batch_size=8), TrainConfig(**settings),
                           schedule=NEW_TASK, start=StartOptions(base, hooks, freeze))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A base trained on text->image only: it never saw audio->image."""
    save = tmp_path_factory.mktemp("base")
    seed_everything(0)
    model = OmniLatentModel(TINY)
    loader = build_dataloader(SyntheticMultimodalDataset(TINY, length=1000, seed=0),
                              batch_size=8, seed=0)
    CurriculumTrainer(model, TrainConfig(steps=100, lr=3e-3, device="cpu", save_dir=save,
                                         log_interval=50),
                      loader, schedule=_one_task("text_to_image"), card=CheckpointCard(),
                      data_source="synthetic").train()
    return save / "step-00000100"


@pytest.fixture(scope="module")
def hooked(base, tmp_path_factory) -> Path:
    """The hook run's save dir: 40 steps of audio->image, base frozen."""
    save = tmp_path_factory.mktemp("hooked") / "run"
    result = run_training(build_run(_hook_run(base, save, 40)))
    assert result.step == 40
    return save


def _held_out() -> dict[str, torch.Tensor]:
    """64 samples of another seed than any training run's."""
    data = SyntheticMultimodalDataset(TINY, length=64, seed=99)
    return collate_multimodal([data[i] for i in range(len(data))])


@torch.no_grad()
def _loss(model: OmniLatentModel, batch: dict, source: str, target: str) -> float:
    return float(model(source, batch[source], target, target=batch[target])["loss"])


def test_hook_specs_parse_and_name_what_is_wrong() -> None:
    assert parse_hook_spec("style") == HookSpec("style", 8, None)
    assert parse_hook_spec("style:tokens=4,layers=0-2") == HookSpec("style", 4, (0, 1, 2))
    assert parse_hook_spec("s:layers=3,0,1-2,tokens=2") == HookSpec("s", 2, (0, 1, 2, 3))
    for spec, message in (("style:tokens=x", "tokens must be a positive integer, got 'x'"),
                          ("style:tokens=0", "tokens must be a positive integer"),
                          ("style:layers=2-1", "bad layers '2-1'"),
                          ("style:layers=a", "bad layers 'a'"),
                          ("style:gate=1", "unknown setting 'gate'"),
                          ("style:tokens=2,tokens=3", "tokens is given twice"),
                          ("style:4", "'4' is not KEY=VALUE"),
                          (":tokens=2", "needs a name")):
        with pytest.raises(UsageError, match=message):
            parse_hook_spec(spec)
    with pytest.raises(UsageError, match=r"layer\(s\) 9 beyond the model, which has layers "
                                         r"0-1") as beyond:
        HookSpec("style", layers=(0, 9)).build(TINY)
    assert beyond.value.hint == "omit layers= to target all 2 layers"
    with pytest.raises(UsageError, match="hook name must start with a letter"):
        HookSpec("9lives").build(TINY)


def test_start_options_refuse_what_cannot_work(tmp_path) -> None:
    with pytest.raises(UsageError, match="--freeze-base trains only new hooks, and none"):
        StartOptions(tmp_path, (), True)
    with pytest.raises(UsageError, match="--freeze-base keeps a trained model") as no_base:
        StartOptions(None, (HookSpec("a"),), True)
    assert no_base.value.hint is not None and "--from CHECKPOINT" in no_base.value.hint
    with pytest.raises(UsageError, match="names must differ; repeated: a"):
        StartOptions(tmp_path, (HookSpec("a"), HookSpec("a", 2)))


def test_a_hook_learns_a_task_the_frozen_base_never_saw(base, hooked) -> None:
    """Issue 11, §2: the hook lowers audio->image's held-out loss by a clear margin; the base
    is bit-identical to its checkpoint, so with the hook removed every task is as before."""
    before = load_trained(base).model
    after = load_trained(hooked).model
    assert set(after.hooks) == {"a2i"}
    saved = load_file(str(base / "model.safetensors"))
    trained = after.state_dict()
    assert all(torch.equal(trained[name], tensor) for name, tensor in saved.items())
    assert {k for k in trained if k not in saved} == {k for k in trained
                                                       if k.startswith("hooks.a2i.")}

    batch = _held_out()
    without, with_hook = _loss(before, batch, "audio", "image"), _loss(after, batch, "audio",
                                                                       "image")
    assert with_hook < 0.75 * without, (with_hook, without)

    after.remove_hook("a2i")
    with torch.no_grad():
        for source in MODALITIES:
            for target in MODALITIES:
                a = before(source, batch[source], target, target=batch[target])
                b = after(source, batch[source], target, target=batch[target])
                assert torch.equal(a["output"], b["output"]), (source, target)


def test_the_saved_hook_is_what_eval_and_generate_load(base, hooked) -> None:
    """SAVE_DIR/hooks/NAME holds the hook alone; `load_trained(base, hooks=[it])` (what `omni
    eval`/`omni generate --hook` do) gives the trained run's outputs exactly."""
    folder = hooked / "hooks" / "a2i"
    assert sorted(p.name for p in folder.iterdir()) == ["hook.json", "hook.safetensors"]
    settings = json.loads((folder / "hook.json").read_text())
    assert (settings["name"], settings["num_tokens"], settings["target_layers"]) == (
        "a2i", 8, [0, 1])
    run = load_trained(hooked).model
    rebuilt = load_trained(base, hooks=[folder]).model
    batch = _held_out()
    with torch.no_grad():
        for source, target in (("audio", "image"), ("text", "image"), ("video", "text")):
            assert torch.equal(run(source, batch[source], target)["output"],
                               rebuilt(source, batch[source], target)["output"])


def test_a_stopped_hook_run_resumes_exactly(base, tmp_path) -> None:
    """2 steps, stop, `resume auto`, 2 more == 4 straight: the hook, every logged loss."""
    straight = run_training(build_run(_hook_run(base, tmp_path / "a", 4)))
    first = build_run(_hook_run(base, tmp_path / "b", 4))
    stopped = run_training(first, should_stop=lambda: first.trainer.step >= 2)
    assert stopped.interrupted and stopped.step == 2
    assert (tmp_path / "b" / "hooks" / "a2i" / "hook.safetensors").is_file()
    resumed = run_training(build_run(replace(_hook_run(base, tmp_path / "b", 4),
                                             resume="auto")))
    assert resumed.step == 4
    a = load_file(str(tmp_path / "a" / "hooks" / "a2i" / "hook.safetensors"))
    b = load_file(str(tmp_path / "b" / "hooks" / "a2i" / "hook.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in straight.history][2:] == [h["loss"] for h in resumed.history]


def test_contradicting_starts_are_usage_errors_naming_what_differs(base, hooked,
                                                                    tmp_path) -> None:
    with pytest.raises(UsageError, match="already has a hook named 'a2i'"):
        build_run(_hook_run(hooked, tmp_path / "again", 2))
    with pytest.raises(UsageError, match=r"layer\(s\) 9 beyond the model"):
        build_run(_hook_run(base, tmp_path / "x", 2, hooks=(HookSpec("h", layers=(9,)),)))
    wide = replace(_hook_run(base, tmp_path / "x", 2), model=ModelOptions(hidden_dim=64))
    with pytest.raises(UsageError, match="hidden_dim 64 \\(the checkpoint's: 32\\)"):
        build_run(wide)
    short = _hook_run(base, tmp_path / "x", 2)
    short = replace(short, data=replace(short.data, max_text_len=16))
    with pytest.raises(UsageError, match="text of up to 128 tokens, not 16") as text:
        build_run(short)
    assert text.value.hint == "pass --max-text-len 128"
    # the save dir of another run (here: the base's own, a plain run) is not continued
    elsewhere = replace(_hook_run(base, base.parent, 2), resume="auto")
    with pytest.raises(UsageError, match="belongs to a run started from a fresh model "
                                         "without new hooks, but this run starts from --from"):
        run_training(build_run(elsewhere))
    # nor a hook run resumed with another hook
    other = replace(_hook_run(base, hooked, 40, hooks=(HookSpec("a2i", tokens=4),)),
                    resume="auto")
    with pytest.raises(UsageError, match="--hook a2i:tokens=8,layers=0,1 --freeze-base, but "
                                         "this run starts from .* --hook a2i:tokens=4"):
        run_training(build_run(other))


def test_the_command_line_trains_a_hook_or_exits_2(base, tmp_path) -> None:
    common = ["train", "--synthetic", "--from", str(base), "--batch-size", "2", "--device",
              "cpu", "--steps", "2", "--log-interval", "1"]
    for extra, message in ((["--hook", "h:tokens=x"], "tokens must be a positive integer"),
                           (["--freeze-base"], "--freeze-base trains only new hooks"),
                           (["--hook", "h:layers=5"], "beyond the model"),
                           (["--hook", "h", "--dim", "64"], "fixes the model's shape")):
        result = runner.invoke(app, [*common, *extra, "--save-dir", str(tmp_path / "bad")])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split())  # however the console wraps
    save = tmp_path / "run"
    result = runner.invoke(app, [*common, "--hook", "h:tokens=2,layers=1", "--freeze-base",
                                 "--save-dir", str(save)])
    assert result.exit_code == 0, result.output
    hook = LatentNeuralHook.load(save / "hooks" / "h")
    assert (hook.num_tokens, hook.target_layers) == (2, (1,))
    assert "h" in load_trained(base, hooks=[save / "hooks" / "h"]).model.hooks
