"""The training application as a library (`omnilatent.training.run`), driven without the CLI:
options that name what is wrong, a model sized by a prepared folder's manifest, the trainer
each data source gets, and where a run resumes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from media import make_video

from omnilatent.errors import ConfigError, UsageError
from omnilatent.tasks import PairSampler
from omnilatent.training import TrainConfig
from omnilatent.training import run as run_module
from omnilatent.training.curriculum import CurriculumSampler
from omnilatent.training.run import (
    DataOptions,
    ModelOptions,
    ResumePlan,
    TrainRunOptions,
    build_run,
    run_training,
)
from pipeline.config import PrepareConfig
from pipeline.lock import FolderLock
from pipeline.prepare.run import RunOptions, prepare
from pipeline.shards.schema import expected_from_config

TINY_MODEL = ModelOptions(hidden_dim=32, num_layers=1, num_heads=4)
# sizes no default has, so a model with them can only have taken them from the manifest
PREP = PrepareConfig(video_size=32, image_size=48, n_mels=16, fps=8, clip_duration=1.0,
                     clip_stride=1.0, eval_fraction=0.0)


def _options(save_dir: Path, data: DataOptions | None = None, **train: Any) -> TrainRunOptions:
    """A tiny model on CPU, 2 steps of synthetic data unless told otherwise."""
    settings = {"steps": 2, "device": "cpu", "log_interval": 1, "save_dir": save_dir, **train}
    return TrainRunOptions(data=data or DataOptions("synthetic", batch_size=2),
                           train=TrainConfig(**settings), model=TINY_MODEL)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("run")
    (base / "videos").mkdir()
    make_video(base / "videos" / "a.mp4", duration=2.0, size=(64, 48))
    result = prepare(base / "videos", base / "out", PREP, RunOptions(workers=1))
    assert result.manifest is not None
    return base / "out"


def test_data_options_name_what_is_wrong(tmp_path) -> None:
    with pytest.raises(ConfigError, match="one of shards, video-dir, synthetic, got 'webcam'"):
        DataOptions("webcam", "x")
    with pytest.raises(ConfigError, match="'shards' needs a path"):
        DataOptions("shards")
    with pytest.raises(ConfigError, match="'video-dir' needs a path"):
        DataOptions("video-dir", "")
    with pytest.raises(ConfigError, match="synthetic data reads no files"):
        DataOptions("synthetic", "videos")
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, got 0"):
        DataOptions("synthetic", batch_size=0)
    with pytest.raises(ConfigError, match="save_dir must be set"):
        TrainRunOptions(DataOptions("synthetic"), TrainConfig(steps=1))


def test_a_prepared_folder_sizes_the_model_and_gets_the_curriculum(prepared, tmp_path) -> None:
    options = _options(tmp_path / "run", DataOptions("shards", str(prepared), batch_size=2))
    run = build_run(options)
    run.board.close()
    config = run.trainer.model.config
    mel_frames = expected_from_config(PREP)["audio_frames"]
    assert (config.video_size, config.image_size, config.n_mels, config.video_frames,
            config.audio_frames) == (32, 48, 16, 8, mel_frames)
    assert config.vocab_size == 259  # the byte tokenizer's own vocabulary, not the default
    assert isinstance(run.trainer.sampler, CurriculumSampler)
    assert run.source.description == f"1 train shard(s) from {prepared}"
    assert run.trainer.card is not None and run.trainer.card.data_config == PREP.to_dict()
    # no eval split: a note when evaluation was left to its default, an error when asked for
    assert run.held_out.shards is None and "has no eval split" in (run.held_out.missing or "")
    with pytest.raises(UsageError, match="has no eval split"):
        build_run(replace(options, train=replace(options.train, eval_every=1)))
    # the same folder named as held-out data is evaluated, every shard of it
    explicit = replace(options, evaluation=replace(options.evaluation, shards=str(prepared)))
    held = build_run(explicit)
    held.board.close()
    assert (held.held_out.shards, held.held_out.split) == (str(prepared), None)


def test_synthetic_data_gets_the_plain_trainer_sized_by_the_model(tmp_path) -> None:
    run = build_run(_options(tmp_path / "run", steps=600,
                             data=DataOptions("synthetic", batch_size=2)))
    run.board.close()
    assert isinstance(run.trainer.sampler, PairSampler)
    assert run.source.expected is None and run.source.corpus_has_text is True
    assert len(run.source.loader.dataset) == 1200  # steps x batch, above the minimum of 1000


def test_resume_auto_passes_over_an_unusable_checkpoint(tmp_path) -> None:
    save = tmp_path / "run"
    first = run_training(build_run(_options(save, save_every=1, keep_last=0)))
    assert first.step == 2
    weights = save / "step-00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a partial write of the newest

    options = replace(_options(save, steps=3, save_every=1, keep_last=0), resume="auto")
    with pytest.raises(UsageError, match="step-00000002 .*truncated") as refused:
        run_training(build_run(options))  # step 2 would be written over it
    assert refused.value.hint is not None and "mv " in refused.value.hint
    assert len(weights.read_bytes()) == 100
    weights.parent.rename(save / "step-00000002.unusable")
    plans: list[ResumePlan] = []
    result = run_training(build_run(options), on_resume=plans.append)
    assert result.step == 3
    (plan,) = plans
    assert plan.checkpoint == save / "step-00000001" and plan.skipped == ()


def test_resume_auto_never_overwrites_checkpoints_it_cannot_verify(tmp_path) -> None:
    """Issue 17 §8: state.json lost from every checkpoint; `--resume auto` used to start from
    step 0 and delete step-00000001 on reaching it. Both survive byte for byte."""
    save = tmp_path / "run"
    run_training(build_run(_options(save, save_every=1, keep_last=0)))
    before = {path: path.read_bytes() for path in save.glob("step-*/*")}
    for state in save.glob("step-*/state.json"):
        state.rename(state.with_name("state.json.lost"))
    before = {path.with_name("state.json.lost") if path.name == "state.json" else path: data
              for path, data in before.items()}
    options = replace(_options(save, steps=2, save_every=1, keep_last=0), resume="auto")
    with pytest.raises(UsageError, match="starts \\(step 0\\).*step-00000002.*step-00000001"):
        run_training(build_run(options))
    assert {path: path.read_bytes() for path in save.glob("step-*/*")} == before


def test_resume_none_over_checkpoints_is_refused_and_the_save_dir_released(tmp_path) -> None:
    save = tmp_path / "run"
    run_training(build_run(_options(save)))
    with pytest.raises(UsageError, match="already holds checkpoints") as refused:
        run_training(build_run(_options(save)))
    assert refused.value.hint is not None and "--resume auto" in refused.value.hint
    with FolderLock(save):  # released by the refused run: another can take it
        pass
    missing = replace(_options(save), resume=str(tmp_path / "nowhere"))
    with pytest.raises(UsageError, match="neither a checkpoint folder"):
        run_training(build_run(missing))


def test_label_pattern_counts_retrieval_by_class_during_training(prepared, tmp_path) -> None:
    """Issue 20, §2: `omni train --label-pattern` evaluates as `omni eval --label-pattern`
    does, by class beside the window itself; a bad pattern, or one without held-out data, is
    refused before anything runs."""
    data = DataOptions("shards", str(prepared), batch_size=2)
    options = _options(tmp_path / "run", data, eval_every=2)
    labelled = replace(options, evaluation=replace(options.evaluation, shards=str(prepared),
                                                   label_pattern=r"^(\w+)\.mp4$"))
    run_training(build_run(labelled))
    records = [json.loads(line) for line in
               (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    metrics = next(record["eval"] for record in records if "eval" in record)
    assert set(metrics["retrieval_by_label"]) == set(metrics["retrieval"])
    assert metrics["retrieval_by_label"]["audio_to_video"]["r1"] == 1.0  # one class: "a"
    with pytest.raises(UsageError, match="not a regular expression"):
        build_run(replace(labelled, evaluation=replace(labelled.evaluation,
                                                       label_pattern="(")))
    with pytest.raises(UsageError, match="has none"):
        build_run(replace(options, train=replace(options.train, eval_every=None),
                          evaluation=replace(options.evaluation, label_pattern="x")))


def test_the_initial_weights_do_not_depend_on_what_was_built_before(tmp_path,
                                                                    monkeypatch) -> None:
    """Issue 16: the model draws its initial weights from its own stream of the seed, so a
    step built before it that draws random numbers changes nothing (the build order is free)."""
    first = build_run(_options(tmp_path / "a"))
    first.board.close()
    tokenizer = run_module.build_tokenizer
    monkeypatch.setattr(run_module, "build_tokenizer",
                        lambda data: (torch.rand(7), tokenizer(data))[1])
    second = build_run(_options(tmp_path / "b"))
    second.board.close()
    weights = first.trainer.model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in second.trainer.model.state_dict().items())
