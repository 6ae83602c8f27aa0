"""Issue 18 §1: a task trains only on the rows that hold its source and target (a window
without a transcript, a video without sound), averaged over them."""

from __future__ import annotations

import torch

from omnilatent import OmniLatentModel
from omnilatent.tasks import build_task, servable_pairs
from omnilatent.training import TrainConfig, Trainer
from omnilatent.training.curriculum import DEFAULT_SCHEDULE, CurriculumSampler
from omnilatent.training.rng import seed_everything
from pipeline.loader.batches import collate
from pipeline.loader.samples import sample_tensors
from tests.conftest import make_inputs


def _batch(cfg, rows: int, seed: int = 0) -> dict:
    """A batch as the shard loader gives it: every row captioned and with sound."""
    batch = make_inputs(cfg, batch=rows, text_len=5, seed=seed)
    batch["text"][0, -2:] = 1 + torch.arange(2)  # no padding: every row holds 5 tokens
    batch["has_text"] = torch.ones(rows, dtype=torch.bool)
    batch["has_audio"] = torch.ones(rows, dtype=torch.bool)
    batch["__key__"] = [f"k{i}" for i in range(rows)]
    batch["meta"] = [{} for _ in range(rows)]
    return batch


def _rows(batch: dict, index: list[int]) -> dict:
    return {k: v[index] if isinstance(v, torch.Tensor) else [v[i] for i in index]
            for k, v in batch.items()}


def _step(cfg, batches: list[dict], task_name: str) -> tuple[float, list[torch.Tensor]]:
    """The loss and gradients of one trainer step over ``batches`` (its micro-batches)."""
    seed_everything(0)
    trainer = Trainer(OmniLatentModel(cfg), TrainConfig(steps=1, lr=1e-3, grad_clip=0.0,
                                                        grad_accum=len(batches)), batches)
    task = build_task(task_name, cfg.tubelet_size)
    trainer.sampler.select = lambda *args: task
    grads: list[torch.Tensor] = []
    step = trainer.optimizer.step

    def record(*args, **kwargs):
        grads.extend(torch.zeros_like(p) if p.grad is None else p.grad.clone()
                     for p in trainer.model.parameters())
        return step(*args, **kwargs)

    trainer.optimizer.step = record
    outcome = trainer._train_step()
    assert outcome is not None
    return float(outcome[1]), grads


def _same(a: tuple[float, list[torch.Tensor]], b: tuple[float, list[torch.Tensor]]) -> None:
    assert abs(a[0] - b[0]) < 1e-6 * max(1.0, abs(b[0]))
    for ga, gb in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7)


def test_a_half_captioned_batch_trains_like_its_captioned_half(tiny_config) -> None:
    batch = _batch(tiny_config, 4)
    batch["text"][[1, 3]] = 0  # no transcript in rows 1 and 3
    batch["has_text"][[1, 3]] = False
    half = _rows(batch, [0, 2])
    for task in ("text_to_image", "audio_to_text"):
        _same(_step(tiny_config, [batch], task), _step(tiny_config, [half], task))


def test_rows_without_sound_do_not_train_audio_tasks(tiny_config) -> None:
    batch = _batch(tiny_config, 4)
    batch["has_audio"][[0, 3]] = False
    half = _rows(batch, [1, 2])
    for task in ("video_to_audio", "audio_to_image", "audio_recon"):
        _same(_step(tiny_config, [batch], task), _step(tiny_config, [half], task))


def test_with_accumulation_the_loss_is_the_mean_over_the_rows_that_train(tiny_config) -> None:
    """Micro-batches weigh by their rows holding the task's modalities: 1 + 2 rows train
    as the 3 rows in one batch would."""
    first, second = _batch(tiny_config, 2, seed=1), _batch(tiny_config, 2, seed=2)
    first["has_audio"][1] = False
    both = {k: (torch.cat([first[k][:1], second[k]]) if isinstance(first[k], torch.Tensor)
                else first[k][:1] + second[k]) for k in first}
    _same(_step(tiny_config, [first, second], "video_to_audio"),
          _step(tiny_config, [both], "video_to_audio"))


def test_no_task_is_chosen_for_a_modality_no_row_holds(tiny_config) -> None:
    batch = _batch(tiny_config, 2)
    batch["has_audio"][:] = False
    batch["text"][:] = 0
    batch["has_text"][:] = False
    present = servable_pairs(batch)
    assert {source for source, _ in present} == {"image", "video"}
    sampler = CurriculumSampler(DEFAULT_SCHEDULE, 100, tiny_config)
    chosen = {sampler.select(step, present, lambda _: None) for step in range(100)}
    chosen.discard(None)
    assert chosen and all({t.source, t.target} <= {"image", "video"} for t in chosen)


def test_sound_and_text_in_different_rows_train_no_audio_text_pair(tiny_config) -> None:
    """Rows 0 with sound and no transcript, row 1 a transcript and no sound: audio tasks and
    text tasks each have a row, audio_to_text and text_to_audio none, so a step never picks
    them (it would have run the model on an empty batch)."""
    batch = _batch(tiny_config, 2)
    batch["has_audio"][1] = False
    batch["text"][0] = 0
    batch["has_text"][0] = False
    present = servable_pairs(batch)
    assert {("audio", "video"), ("text", "image"), ("audio", "audio"), ("text", "text")} <= present
    assert not {("audio", "text"), ("text", "audio")} & present
    seed_everything(0)
    trainer = Trainer(OmniLatentModel(tiny_config), TrainConfig(steps=32, lr=1e-3), [batch])
    result = trainer.train()
    tasks = {record["task"] for record in result.history}
    assert "audio_to_text" not in tasks and "text_to_audio" not in tasks
    assert {"audio_to_video", "text_to_image"} <= tasks


def test_collate_flags_the_rows_of_videos_without_sound() -> None:
    mel = torch.zeros(4, 6, dtype=torch.float16).numpy()
    samples = [sample_tensors(None, None, mel, text, key=f"k{i}", meta=meta)
               for i, (text, meta) in enumerate([("hi", {"has_audio": True}),
                                                 ("", {"has_audio": False}), ("yo", {})])]
    batch = collate(samples)
    assert batch["has_audio"].tolist() == [True, False, True]
    assert batch["has_text"].tolist() == [True, False, True]
