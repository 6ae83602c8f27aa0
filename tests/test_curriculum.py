from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from omnilatent import OmniLatentModel
from omnilatent.errors import ConfigError
from omnilatent.training import SyntheticMultimodalDataset, TrainConfig, build_dataloader
from omnilatent.training.curriculum import (
    DEFAULT_SCHEDULE,
    TASK_NAMES,
    CurriculumTrainer,
    _RoundRobin,
    build_task,
    default_schedule,
    parse_schedule,
)
from omnilatent.training.rng import seed_everything
from omnilatent.training.trainer import TrainerCallbacks
from tests.conftest import TextOnEvenSamples, make_inputs


def _bounds(schedule, total):
    return [(s.phase.name, s.start, s.end) for s in schedule.spans(total)]


def test_default_phase_boundaries() -> None:
    assert _bounds(DEFAULT_SCHEDULE, 100) == [
        ("warmup", 0, 5), ("crossmodal", 5, 25), ("temporal", 25, 35),
        ("grounding", 35, 65), ("joint", 65, 100)]
    assert _bounds(DEFAULT_SCHEDULE, 40) == [
        ("warmup", 0, 2), ("crossmodal", 2, 10), ("temporal", 10, 14),
        ("grounding", 14, 26), ("joint", 26, 40)]
    # cumulative shares are rounded half up even where their float sum falls short of the half
    # (0.05 + 0.2 + 0.1 + 0.3 = 0.6499999999999999: 6.5 of 10 steps -> 7)
    assert _bounds(DEFAULT_SCHEDULE, 10) == [
        ("warmup", 0, 1), ("crossmodal", 1, 3), ("temporal", 3, 4),
        ("grounding", 4, 7), ("joint", 7, 10)]
    # spans always tile the run exactly
    for total in (5, 7, 33, 1001):
        spans = DEFAULT_SCHEDULE.spans(total)
        assert spans[0].start == 0 and spans[-1].end == total
        assert all(a.end == b.start for a, b in zip(spans, spans[1:], strict=False))


def test_default_phases_add_tasks_cumulatively() -> None:
    tasks = [set(p.tasks) for p in DEFAULT_SCHEDULE.phases]
    assert tasks[0] == {"video_recon", "audio_recon"}
    assert tasks[1] - tasks[0] == {"video_to_audio", "audio_to_video"}
    assert tasks[2] - tasks[1] == {"temporal"}
    assert tasks[3] - tasks[2] == {"video_to_text", "audio_to_text"}
    assert tasks[4] == set(TASK_NAMES)
    # cross-modal and text tasks weigh 4x reconstruction and future frames in every phase
    joint = DEFAULT_SCHEDULE.phases[4].tasks
    assert joint["audio_to_video"] == joint["video_to_text"] == 4 * joint["video_recon"]
    assert joint["temporal"] == joint["audio_recon"] == 0.5


def test_weights_set_the_share_of_steps_within_a_phase() -> None:
    """Smooth weighted round-robin: over a phase, each task gets its weight's share."""
    phase = DEFAULT_SCHEDULE.phases[1]  # recon 0.5 + 0.5, cross-modal 2 + 2
    round_robin = _RoundRobin()
    picks = [round_robin.pick(phase.tasks) for _ in range(50)]
    assert picks.count("audio_to_video") == picks.count("video_to_audio") == 20
    assert picks.count("video_recon") == picks.count("audio_recon") == 5


def test_inline_spec_and_shortcuts() -> None:
    schedule = parse_schedule("warmup=0.05,crossmodal=0.3,temporal=0.3,grounding=0.1,joint=0.25")
    assert _bounds(schedule, 100) == [
        ("warmup", 0, 5), ("crossmodal", 5, 35), ("temporal", 35, 65),
        ("grounding", 65, 75), ("joint", 75, 100)]
    shortcut = default_schedule({"warmup": 0.2, "temporal": 0.15})
    assert [p.share for p in shortcut.phases] == pytest.approx([0.2, 0.2, 0.15, 0.3, 0.15])


def test_schedule_files(tmp_path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[[phases]]\nname = "recon"\nsteps = 3\ntasks = ["video_recon"]\n\n'
                    '[[phases]]\nname = "mix"\nshare = 1.0\n'
                    'tasks = { temporal = 2.0, audio_to_text = 1.0 }\n')
    schedule = parse_schedule(str(toml))
    assert _bounds(schedule, 10) == [("recon", 0, 3), ("mix", 3, 10)]
    assert schedule.phases[1].tasks == {"temporal": 2.0, "audio_to_text": 1.0}
    js = tmp_path / "s.json"
    js.write_text(json.dumps({"phases": [{"name": "a", "steps": 4, "tasks": ["audio_recon"]},
                                         {"name": "b", "steps": 6, "tasks": ["temporal"]}]}))
    assert _bounds(parse_schedule(str(js)), 10) == [("a", 0, 4), ("b", 4, 10)]
    with pytest.raises(ConfigError, match="phase steps sum to 10 but the run has 12"):
        parse_schedule(str(js)).spans(12)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("warmup=0.5,crossmodal=0.3,temporal=0.3,grounding=0.1,joint=0.25", "sum to 1"),
        ("warmup=0.1,dance=0.9", "unknown phase"),
        ("warmup", "expected 'default'"),
        ("warmup=abc", "bad share"),
        ("nope.toml", "does not exist"),
    ],
)
def test_invalid_inline_specs(spec, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_schedule(spec)


@pytest.mark.parametrize(
    ("phase", "message"),
    [
        ({"name": "x", "share": 1.0, "tasks": ["juggling"]}, "unknown task 'juggling'"),
        ({"name": "x", "steps": -3, "tasks": ["temporal"]}, "steps must be an integer >= 0"),
        ({"name": "x", "share": 1.0, "steps": 2, "tasks": ["temporal"]}, "exactly one"),
        ({"name": "x", "share": 1.0, "tasks": {"temporal": 0}}, "weight > 0"),
        ({"name": "x", "share": 1.0, "tasks": []}, "no tasks"),
        ({"name": "x", "share": 1.0, "tasks": ["temporal"], "colour": 1}, "unknown key"),
    ],
)
def test_invalid_schedule_files(tmp_path, phase, message) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"phases": [phase]}))
    with pytest.raises(ConfigError, match=message):
        parse_schedule(str(path))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_each_task_has_a_finite_loss_and_gradients(tiny_model, tiny_config, name) -> None:
    task = build_task(name, tiny_config.tubelet_size)
    batch = make_inputs(tiny_config)
    source, target = task.inputs(batch)
    if name == "temporal":
        assert source.shape[2] == target.shape[2] == tiny_config.video_frames // 2
        assert torch.equal(torch.cat([source, target], dim=2), batch["video"])
    out = tiny_model(task.source, source, task.target, target=target)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in tiny_model.parameters() if p.grad is not None)
    # the loss reaches back through the target's head, every block, to the source's encoder;
    # the target decoder's queries only between modalities (reconstruction and future frames
    # keep the identity: output token i = backbone token i)
    reads = tiny_model.text_embed if task.source == "text" else tiny_model.encoders[task.source]
    writes = tiny_model.text_embed if task.target == "text" else tiny_model.decoders[task.target]
    for part in (writes, *tiny_model.blocks, reads):
        assert _has_gradient(part)
    assert _has_gradient(tiny_model.decoder) == (task.source != task.target)
    # and no further: the other modalities' encoders and heads take no part
    for modality in tiny_model.encoders:
        assert modality == task.source or not _has_gradient(tiny_model.encoders[modality])
        assert modality == task.target or not _has_gradient(tiny_model.decoders[modality])


def _has_gradient(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and bool(p.grad.any()) for p in module.parameters())


class _Events(TrainerCallbacks):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.records: list[dict] = []

    def on_event(self, message: str) -> None:
        self.events.append(message)

    def on_log(self, record: dict) -> None:
        self.records.append(record)


def _curriculum(cfg, steps, *, text: bool, corpus_has_text=None, save_dir=None):
    seed_everything(0)
    model = OmniLatentModel(cfg)
    dataset = SyntheticMultimodalDataset(cfg, length=16, seed=0, text_len=4)
    if not text:
        dataset = _NoText(dataset)
    loader = build_dataloader(dataset, batch_size=2)
    events = _Events()
    trainer = CurriculumTrainer(model, TrainConfig(steps=steps, log_interval=1, lr=1e-3),
                                loader, total_steps=steps, save_dir=save_dir,
                                corpus_has_text=corpus_has_text, callbacks=events)
    return trainer, events


class _NoText(torch.utils.data.Dataset):
    def __init__(self, inner) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        return {**self.inner[i], "text": torch.zeros(0, dtype=torch.long)}


def test_phases_tasks_and_transitions_are_logged(tiny_config) -> None:
    trainer, events = _curriculum(tiny_config, 20, text=True)
    result = trainer.train()
    phases = [r["phase"] for r in events.records]
    assert phases == ["warmup"] * 1 + ["crossmodal"] * 4 + ["temporal"] * 2 + \
        ["grounding"] * 6 + ["joint"] * 7
    assert sum("phase " in e for e in events.events) == 5
    by_step = {h["step"]: h["task"] for h in result.history}
    assert by_step[1] in {"video_recon", "audio_recon"}
    grounding = {by_step[s] for s in range(8, 14)}
    assert grounding <= set(DEFAULT_SCHEDULE.phases[3].tasks)
    assert {"video_to_text", "audio_to_text"} <= grounding  # the tasks grounding adds, first


def test_batches_without_text_skip_text_tasks_and_count_them(tiny_config) -> None:
    trainer, events = _curriculum(tiny_config, 20, text=False)
    result = trainer.train()
    assert result.step == 20
    assert not any("text" in h["task"] for h in result.history)
    assert events.records[-1]["text_skipped"] > 0


def test_corpus_without_text_reassigns_grounding_up_front(tiny_config) -> None:
    trainer, events = _curriculum(tiny_config, 20, text=False, corpus_has_text=False)
    result = trainer.train()
    assert any("no transcripts" in e for e in events.events)
    grounding = [h["task"] for h in result.history if 8 <= h["step"] <= 13]
    assert grounding and not any("text" in t for t in grounding)
    assert events.records[-1]["text_skipped"] == 0


def test_curriculum_resume_is_bit_identical(tmp_path, tiny_config) -> None:
    straight, _ = _curriculum(tiny_config, 20, text=True, save_dir=tmp_path / "a")
    a = straight.train()
    first, _ = _curriculum(tiny_config, 20, text=True, save_dir=tmp_path / "b")
    first.config.save_every = 6
    first.train(should_stop=lambda: first.step >= 13)  # inside the temporal phase
    resumed, _ = _curriculum(tiny_config, 20, text=True, save_dir=tmp_path / "b")
    resumed.resume(tmp_path / "b" / "step-00000013")
    b = resumed.train()
    assert [h["loss"] for h in a.history][13:] == [h["loss"] for h in b.history]
    assert [h["task"] for h in a.history][13:] == [h["task"] for h in b.history]
    for (name, x), (_, y) in zip(straight.model.state_dict().items(),
                                 resumed.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_a_phase_no_batch_can_serve_stops_with_a_clear_error(tiny_config, tmp_path,
                                                             monkeypatch) -> None:
    import omnilatent.training.trainer as trainer_module
    from omnilatent.errors import OmniLatentError

    monkeypatch.setattr(trainer_module, "MAX_SKIPPED_IN_A_ROW", 5)
    path = tmp_path / "text_only.json"
    path.write_text(json.dumps({"phases": [{"name": "talk", "share": 1.0,
                                            "tasks": ["video_to_text"]}]}))
    seed_everything(0)
    model = OmniLatentModel(tiny_config)
    dataset = _NoText(SyntheticMultimodalDataset(tiny_config, length=8, seed=0, text_len=4))
    trainer = CurriculumTrainer(model, TrainConfig(steps=3), build_dataloader(dataset, 2),
                                schedule=parse_schedule(str(path)))
    with pytest.raises(OmniLatentError, match="could serve no task"):
        trainer.train()


def test_curriculum_trainer_copies_and_validates_the_config(tiny_config, tmp_path) -> None:
    """Issue 9, item 10: total_steps and save_dir go into a validated copy of the config."""
    model = OmniLatentModel(tiny_config)
    loader = build_dataloader(SyntheticMultimodalDataset(tiny_config, length=4), 2)
    with pytest.raises(ConfigError, match="warmup_steps must lie in \\[0, steps=10\\]"):
        CurriculumTrainer(model, TrainConfig(warmup_steps=50), loader, total_steps=10)
    config = TrainConfig(steps=1000)
    trainer = CurriculumTrainer(model, config, loader, total_steps=20, save_dir=tmp_path)
    assert (config.steps, config.save_dir) == (1000, None)
    assert (trainer.config.steps, trainer.config.save_dir) == (20, tmp_path)


def test_temporal_on_clips_shorter_than_two_tubelets_is_refused_up_front(tiny_config) -> None:
    """Issue 9, item 9: not at the first temporal step, after the earlier phases ran."""
    short = dataclasses.replace(tiny_config, video_frames=4)  # one tubelet of 4
    model = OmniLatentModel(short)
    loader = build_dataloader(SyntheticMultimodalDataset(short, length=4), 2)
    with pytest.raises(ConfigError, match="phase 'temporal' trains 'temporal'.*at least 8 "
                                          "frames.*clips have 4"):
        CurriculumTrainer(model, TrainConfig(), loader, total_steps=20)
    no_temporal = parse_schedule("warmup=0.5,crossmodal=0.5,temporal=0,grounding=0,joint=0")
    assert CurriculumTrainer(model, TrainConfig(), loader, total_steps=20,
                             schedule=no_temporal).train().step == 20


def test_with_grad_accum_a_phase_task_fits_every_micro_batch(tiny_config) -> None:
    """Issue 9, item 10: with transcript text in every other batch and two batches per step,
    the grounding phase trains its non-text tasks and counts the text it could not serve."""
    dataset = TextOnEvenSamples(SyntheticMultimodalDataset(tiny_config, length=16, seed=0,
                                                     text_len=4))
    grounding_only = parse_schedule("warmup=0,crossmodal=0,temporal=0,grounding=1,joint=0")
    seed_everything(0)
    trainer = CurriculumTrainer(OmniLatentModel(tiny_config),
                                TrainConfig(steps=4, log_interval=1, grad_accum=2),
                                build_dataloader(dataset, 1, shuffle=False),
                                schedule=grounding_only)
    result = trainer.train()
    assert result.step == 4 and not any("text" in h["task"] for h in result.history)
    assert trainer.sampler.text_skipped == 4


