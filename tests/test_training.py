from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from omnilatent import MODALITIES, OmniLatentConfig, OmniLatentModel
from omnilatent.checkpoint import files as checkpoint_files
from omnilatent.checkpoint.files import (
    STATE_FILE,
    find_latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    step_dir_name,
    verify_checkpoint,
)
from omnilatent.errors import CheckpointError, ConfigError, OmniLatentError
from omnilatent.tasks import PairSampler, servable_pairs, task_name
from omnilatent.training import (
    SyntheticMultimodalDataset,
    TrainConfig,
    Trainer,
    build_dataloader,
    collate_multimodal,
)
from omnilatent.training import trainer as trainer_module
from omnilatent.training.checkpointer import upgrade
from omnilatent.training.config import lr_factor
from omnilatent.training.rng import seed_everything
from omnilatent.training.run_log import WALL_CLOCK_FIELDS
from omnilatent.training.trainer import TrainerCallbacks
from pipeline.loader.samples import LoaderStats
from pipeline.lock import FolderInUseError, FolderLock
from tests.conftest import TINY, TextOnEvenSamples
from tests.host_sync import HostSyncRecorder


def _trainer(cfg, save_dir: Path | None, steps: int, *, loader=None, data_source=None,
             **overrides) -> Trainer:
    seed_everything(0)
    model = OmniLatentModel(cfg)
    if loader is None:
        dataset = SyntheticMultimodalDataset(cfg, length=24, seed=0, text_len=6)
        loader = build_dataloader(dataset, batch_size=2, seed=0)
    config = TrainConfig(**{"steps": steps, "lr": 1e-3, "log_interval": 1,
                            "save_dir": save_dir, **overrides})
    return Trainer(model, config, loader, data_source=data_source)


def _metrics(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for r in records:
        for name in WALL_CLOCK_FIELDS:
            r.pop(name)
    return records


def _rewrite_state(checkpoint: Path, step: int, edit) -> Path:
    """Write the checkpoint ``checkpoint`` again at ``step``, its trainer state changed by
    ``edit``: a complete, hash-valid checkpoint whose content the trainer must judge."""
    loaded = load_checkpoint(checkpoint)
    state = {k: v for k, v in loaded.state.items()
             if k not in ("format", "step", "files", "state_sha256")}
    edit(state)
    shutil.rmtree(checkpoint.parent / step_dir_name(step), ignore_errors=True)
    return save_checkpoint(checkpoint.parent, step, loaded.model_state, loaded.training_state,
                           state)


def test_exact_resume_is_bit_identical(tmp_path, tiny_config) -> None:
    """N steps straight == N/2 steps, a fresh process-like restart, then N/2 more."""
    steps = 14  # crosses an epoch boundary of the 12-batch synthetic loader
    straight = _trainer(tiny_config, tmp_path / "a", steps)
    result_a = straight.train()

    first = _trainer(tiny_config, tmp_path / "b", steps, save_every=7)
    stopped = first.train(should_stop=lambda: first.step >= 9)  # "killed" after step 9
    assert stopped.interrupted and stopped.step == 9
    # a kill after the step-9 checkpoint would leave step-7 as newest: simulate that
    (tmp_path / "b" / "step-00000009").rename(tmp_path / "b" / ".tmp-step-00000009-dead")
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 10, "loss": 1.0}\n{"step": 11, "lo')  # lines past the checkpoint

    resumed = _trainer(tiny_config, tmp_path / "b", steps, save_every=7)
    latest = find_latest_checkpoint(tmp_path / "b").latest
    assert latest is not None and latest.name == "step-00000007"
    resumed.resume(latest)
    result_b = resumed.train()

    for (name, a), (_, b) in zip(straight.model.state_dict().items(),
                                 resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in result_a.history][7:] == [h["loss"] for h in result_b.history]
    assert _metrics(tmp_path / "a" / "metrics.jsonl") == _metrics(tmp_path / "b" /
                                                                   "metrics.jsonl")


def test_checkpoint_layout_and_weights_only_load(tmp_path, tiny_config) -> None:
    trainer = _trainer(tiny_config, tmp_path, 3)
    trainer.train()
    ckpt = tmp_path / "step-00000003"
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "state.json",
                                                      "training.pt"]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 3
    assert state["model_config"] == tiny_config.to_dict()
    assert all(isinstance(v, int) for v in state["rng"]["torch"])
    training = torch.load(ckpt / "training.pt", weights_only=True)
    assert set(training) == {"optimizer", "scheduler", "scaler"}
    loaded = load_checkpoint(ckpt)
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(loaded.model_state[name], tensor)


def test_corrupt_and_partial_checkpoints_are_reported_and_skipped(tmp_path, tiny_config) -> None:
    trainer = _trainer(tiny_config, tmp_path, 4, save_every=1, keep_last=0)
    trainer.train()
    # newest: truncated weights; next: flipped byte; next: missing state.json
    weights = tmp_path / "step-00000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    training = tmp_path / "step-00000003" / "training.pt"
    data = bytearray(training.read_bytes())
    data[len(data) // 2] ^= 0xFF
    training.write_bytes(bytes(data))
    (tmp_path / "step-00000002" / "state.json").unlink()
    (tmp_path / ".tmp-step-00000005-123").mkdir()  # a half-written one
    search = find_latest_checkpoint(tmp_path)
    assert search.latest == tmp_path / "step-00000001"
    reasons = [reason for _, reason in search.skipped]
    assert len(reasons) == 3
    assert "truncated" in reasons[0] and "SHA-256" in reasons[1] and "partial" in reasons[2]
    with pytest.raises(CheckpointError):
        verify_checkpoint(tmp_path / "step-00000004")
    damaged = weights.read_bytes()
    with pytest.raises(CheckpointError, match="already exists"):
        trainer.save()  # step 4 again: the folder that failed to verify is never replaced
    assert weights.read_bytes() == damaged
    (tmp_path / "step-00000004").rename(tmp_path / "step-00000004.old")
    trainer.save()  # the next save clears the debris of the killed one
    assert not (tmp_path / ".tmp-step-00000005-123").exists()
    verify_checkpoint(tmp_path / "step-00000004")


def test_keep_last_prunes_old_checkpoints(tmp_path, tiny_config) -> None:
    _trainer(tiny_config, tmp_path, 5, save_every=1, keep_last=2).train()
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000004", "step-00000005"]


def test_resume_refuses_a_different_model(tmp_path, tiny_config) -> None:
    import dataclasses

    _trainer(tiny_config, tmp_path, 2).train()
    other = _trainer(dataclasses.replace(tiny_config, num_layers=3), None, 2)
    with pytest.raises(CheckpointError, match="num_layers"):
        other.resume(tmp_path / "step-00000002")


def test_metrics_records_have_the_documented_fields(tmp_path, tiny_config) -> None:
    _trainer(tiny_config, tmp_path, 4, grad_accum=2).train()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert {"step", "loss", "losses", "lr", "tokens_per_s", "samples_per_s"} <= set(r)
        assert math.isfinite(r["loss"]) and r["samples_per_s"] > 0 and r["tokens_per_s"] > 0
        assert len(r["losses"]) == 1
        assert next(iter(r["losses"])) in {task_name(s, t) for s in MODALITIES for t in MODALITIES}


def test_synthetic_training_reduces_the_loss(tiny_config) -> None:
    seed_everything(0)
    model = OmniLatentModel(tiny_config)
    loader = build_dataloader(SyntheticMultimodalDataset(tiny_config, length=256, seed=0),
                              batch_size=4)
    config = TrainConfig(steps=64, lr=3e-3, log_interval=16)
    result = Trainer(model, config, loader).train()
    first = sum(h["loss"] for h in result.history[:16]) / 16
    last = sum(h["loss"] for h in result.history[-16:]) / 16
    assert last < first


def test_pair_sampler_covers_all_pairs_in_any_16_steps_and_skips_missing() -> None:
    batch = {m: torch.ones(1, 2, dtype=torch.long) if m == "text" else torch.zeros(1)
             for m in MODALITIES}
    sampler, present = PairSampler(seed=3), servable_pairs(batch)
    names = [sampler.choose(present).name for _ in range(40)]
    for start in range(0, 24):
        assert len(set(names[start:start + 16])) == 16
    state = sampler.state_dict()
    again = PairSampler(seed=3)
    again.load_state_dict(state)
    assert [again.choose(present).name for _ in range(5)] == [sampler.choose(present).name
                                                              for _ in range(5)]
    no_text = dict(batch, text=torch.zeros(1, 3, dtype=torch.long))  # all padding
    tasks = [sampler.choose(servable_pairs(no_text)) for _ in range(30)]
    assert all("text" not in (t.source, t.target) for t in tasks)
    assert len({t.name for t in tasks}) == 9


def test_lr_schedule_warms_up_then_decays_to_min() -> None:
    factors = [lr_factor(s, warmup=4, total=20, min_ratio=0.1) for s in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(factors[3:], factors[4:], strict=False))
    assert factors[20] == pytest.approx(0.1)


def test_collate_pads_text_and_keeps_metadata() -> None:
    batch = collate_multimodal([
        {"text": torch.tensor([5, 6, 7]), "image": torch.zeros(3, 2, 2), "meta": {"a": 1}},
        {"text": torch.tensor([8]), "image": torch.ones(3, 2, 2), "meta": {"a": 2}},
    ])
    assert batch["text"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["image"].shape == (2, 3, 2, 2)
    assert batch["meta"] == [{"a": 1}, {"a": 2}]


def test_resumable_loader_continues_mid_epoch(tiny_config) -> None:
    dataset = SyntheticMultimodalDataset(tiny_config, length=10, seed=0, text_len=4)
    a = build_dataloader(dataset, batch_size=3, seed=5)
    full = [b["text"] for b in a] + [b["text"] for b in a]  # two epochs
    b = build_dataloader(dataset, batch_size=3, seed=5)
    it = iter(b)
    next(it)
    state = b.state_dict()
    c = build_dataloader(dataset, batch_size=3, seed=5)
    c.load_state_dict(state)
    rest = [x["text"] for x in c] + [x["text"] for x in c]
    assert all(torch.equal(x, y) for x, y in zip(full[1:], rest, strict=True))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"), ({"device": "tpu"}, "device"),
     ({"warmup_steps": 50, "steps": 10}, "warmup_steps"), ({"grad_accum": 0}, "grad_accum"),
     ({"save_every": -1}, "save_every"), ({"min_lr_ratio": 2.0}, "min_lr_ratio")],
)
def test_train_config_validation(overrides, field) -> None:
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**overrides)


def test_evaluation_during_training_changes_nothing_and_is_logged(tmp_path, tiny_config) -> None:
    """A run that evaluates every 2 steps ends with the same parameters as one that does not,
    and its metrics.jsonl holds an {"step", "eval"} record per evaluation. With dropout the
    run draws random numbers, and this evaluator draws some too (as one that samples would):
    the trainer's RNG snapshots keep them apart."""
    from omnilatent.evaluation.evaluate import evaluate
    from omnilatent.inference.text import BYTE_CODEC

    tiny_config = dataclasses.replace(tiny_config, dropout=0.1)
    dataset = SyntheticMultimodalDataset(tiny_config, length=8, seed=5, text_len=6)
    held_out = []
    for batch in build_dataloader(dataset, batch_size=4, seed=1):
        keys = [f"held-{len(held_out)}-{i}" for i in range(4)]
        held_out.append({**batch, "__key__": keys, "meta": [{"source": k} for k in keys]})

    def evaluator(model):
        torch.rand(3)
        return evaluate(model, held_out, BYTE_CODEC).metrics

    plain = _trainer(tiny_config, tmp_path / "plain", 6)
    plain.train()
    evaluated = _trainer(tiny_config, tmp_path / "eval", 6, eval_every=2)
    evaluated.evaluator = evaluator
    evaluated.train()
    for (name, a), b in zip(plain.model.state_dict().items(),
                            evaluated.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    records = [json.loads(line) for line in (tmp_path / "eval" / "metrics.jsonl").read_text()
               .splitlines()]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert evals[0]["eval"]["samples"] == 8 and "audio_to_video" in evals[0]["eval"]["retrieval"]
    with pytest.raises(ConfigError, match="eval_every"):
        TrainConfig(eval_every=-1)


def _garbage_rng(state: dict) -> None:
    state["rng"]["torch"] = [7] * len(state["rng"]["torch"])  # right size, invalid MT state


def test_save_prunes_around_the_new_checkpoint_and_skips_unrestorable_ones(tmp_path,
                                                                          tiny_config) -> None:
    """Issue 9, item 4: the checkpoint just written is never pruned, and a newer one this
    trainer could not restore neither counts as kept nor pushes a good one out."""
    trainer = _trainer(tiny_config, tmp_path, 4, save_every=1, keep_last=0)
    trainer.train()
    _rewrite_state(tmp_path / "step-00000004", 9, _garbage_rng)  # e.g. an edited later run
    trainer.config.keep_last = 2
    shutil.rmtree(tmp_path / "step-00000004")  # written again: a save never replaces a folder
    trainer.save()  # step 4 again
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-00000003", "step-00000004", "step-00000009"]
    trainer.config.keep_last = 1
    shutil.rmtree(tmp_path / "step-00000004")
    trainer.save()
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000004",
                                                                "step-00000009"]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> Path:
    save = tmp_path_factory.mktemp("run")
    _trainer(OmniLatentConfig(**TINY), save, 2, save_every=1, keep_last=0).train()
    return save


def _set(path: str, value):
    def edit(state: dict) -> None:
        *parents, last = path.split(".")
        target = state
        for key in parents:
            target = target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return edit


@pytest.mark.parametrize(("edit", "reason"), [
    (_garbage_rng, "invalid torch generator state"),
    (_set("rng.numpy", ["MT19937", [1] * 624, 10**6, 0, 0.0]), "rng.numpy"),
    (_set("rng.python", [3, [1] * 10, None]), "rng.python"),
    (_set("rng", []), "'rng' must be an object"),
    (_set("sampler", KeyError), "has no 'sampler'"),
    (_set("sampler.turn", "3"), "'sampler' must be"),
    (_set("sampler.turn", 10**30), "integer from 0 to"),
    (_set("data", [1, 2]), "'data' must be"),
    (_set("data.batches_seen", -1), "'data' must be"),
    (_set("model_config.hidden_dim", "wide"), "model_config"),
    (_set("hooks", {}), "'hooks' must be"),
    (_set("log_window.recent", [["video->audio"]]), "log_window"),
    (_set("card", {"tokenizer": 5}), "card"),
])
def test_unrestorable_trainer_state_is_skipped_or_refused_unchanged(two_checkpoints, tmp_path,
                                                                    tiny_config, edit,
                                                                    reason) -> None:
    """Issue 9, item 5: an edited state.json (hash-valid) is skipped by the search with its
    reason, and resuming it explicitly is a CheckpointError before anything changed."""
    save = tmp_path / "run"
    shutil.copytree(two_checkpoints, save)
    _rewrite_state(save / "step-00000002", 2, edit)
    trainer = _trainer(tiny_config, save, 4)
    search = find_latest_checkpoint(save, check=trainer.checkpointer.check)
    assert search.latest == save / "step-00000001"
    assert [path.name for path, _ in search.skipped] == ["step-00000002"]
    assert reason in search.skipped[0][1]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    metrics = (save / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match="step-00000002"):
        trainer.resume(save / "step-00000002")
    assert trainer.step == 0 and trainer.sampler.turn == 0
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert (save / "metrics.jsonl").read_text() == metrics
    FolderLock(save).acquire().release()  # the failed resume gave the save dir back


def test_a_second_run_into_a_save_dir_in_use_is_refused(tmp_path, tiny_config) -> None:
    """Issue 9, item 6: a run holds its save dir's lock for its whole length and gives it
    back when it ends, also by an error."""
    with FolderLock(tmp_path):  # another run
        second = _trainer(tiny_config, tmp_path, 2)
        with pytest.raises(FolderInUseError, match=f"another run \\(pid {os.getpid()}\\)"):
            second.train()
    assert not (tmp_path / "metrics.jsonl").exists()

    class _Holder(TrainerCallbacks):
        def on_step(self, step: int, total: int, task: str) -> None:
            with pytest.raises(FolderInUseError):
                FolderLock(tmp_path).acquire()
            raise RuntimeError("boom")

    failing = _trainer(tiny_config, tmp_path, 2)
    failing.callbacks = _Holder()
    with pytest.raises(RuntimeError, match="boom"):
        failing.train()
    assert _trainer(tiny_config, tmp_path, 1).train().step == 1


class _Lossy:
    """A loader that drops 4 samples for each batch of 2 it delivers, counted as the shard
    loader counts them."""

    def __init__(self, inner) -> None:
        self.inner, self.stats = inner, LoaderStats()

    def __iter__(self):
        for batch in self.inner:
            self.stats.skipped_samples += 4
            self.stats.samples += 2
            self.stats.batches += 1
            self.stats.note("a.tar: sample 7: missing mel")
            yield batch

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state) -> None:
        self.inner.load_state_dict(state)


def _lossy_trainer(cfg, save_dir: Path, steps: int, **overrides) -> Trainer:
    dataset = SyntheticMultimodalDataset(cfg, length=24, seed=0, text_len=6)
    return _trainer(cfg, save_dir, steps, loader=_Lossy(build_dataloader(dataset, 2, seed=0)),
                    **overrides)


class _Events(TrainerCallbacks):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_event(self, message: str) -> None:
        self.events.append(message)


def test_dropped_samples_are_logged_warned_and_counted_across_a_resume(tmp_path,
                                                                       tiny_config) -> None:
    """Issue 9, item 7: the loader's counters reach every record and the result, over the
    whole run (a resume included), with one warning past 1 % dropped."""
    first = _lossy_trainer(tiny_config, tmp_path, 4, log_interval=2, save_every=2)
    events = first.callbacks = _Events()
    result = first.train(should_stop=lambda: first.step >= 2)
    assert result.data == {"samples": 4, "dropped": 8, "unsafe_members": 0,
                           "corrupt_shards": 0, "surplus_shards": 0}
    warnings = [e for e in events.events if "dropped" in e]
    assert len(warnings) == 1
    assert "8 of 12 samples (66.7%)" in warnings[0] and "missing mel" in warnings[0]
    resumed = _lossy_trainer(tiny_config, tmp_path, 4, log_interval=2, save_every=2)
    resumed.resume(tmp_path / "step-00000002")
    assert resumed.train().data["dropped"] == 16
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["data"]["samples"], r["data"]["dropped"]) for r in records] == [
        (2, 4, 8), (4, 8, 16)]


def test_resume_logs_the_records_an_uninterrupted_run_logs(tmp_path, tiny_config) -> None:
    """Issue 9, item 8: the window a record averages over is checkpointed, so records after
    a resume inside a window are the uninterrupted run's (wall-clock fields aside)."""
    _trainer(tiny_config, tmp_path / "a", 8, log_interval=4).train()
    first = _trainer(tiny_config, tmp_path / "b", 8, log_interval=4, save_every=3)
    first.train(should_stop=lambda: first.step >= 3)
    resumed = _trainer(tiny_config, tmp_path / "b", 8, log_interval=4)
    resumed.resume(tmp_path / "b" / "step-00000003")
    resumed.train()
    straight = _metrics(tmp_path / "a" / "metrics.jsonl")
    assert [r["step"] for r in straight] == [4, 8]
    assert _metrics(tmp_path / "b" / "metrics.jsonl") == straight


def test_task_names_are_one_spelling_and_old_checkpoints_resume_under_it(tmp_path,
                                                                        tiny_config) -> None:
    """Issue 20, §2: synthetic pairs are named as curriculum tasks and eval records name them
    (``audio_to_text``, ``video_recon``); a checkpoint whose loss window still holds the old
    ``video->audio`` spelling resumes and logs the same records under the new names."""
    assert [task_name("audio", "text"), task_name("video", "video")] == [
        "audio_to_text", "video_recon"]
    _trainer(tiny_config, tmp_path / "a", 8, log_interval=4).train()
    first = _trainer(tiny_config, tmp_path / "b", 8, log_interval=4, save_every=3)
    first.train(should_stop=lambda: first.step >= 3)
    old_names = {task_name(s, t): f"{s}->{t}" for s in MODALITIES for t in MODALITIES}

    def old_spelling(state: dict) -> None:
        recent = state["log_window"]["recent"]
        assert recent and all(name in old_names for name, _ in recent)
        state["log_window"]["recent"] = [[old_names[name], loss] for name, loss in recent]

    _rewrite_state(tmp_path / "b" / "step-00000003", 3, old_spelling)
    resumed = _trainer(tiny_config, tmp_path / "b", 8, log_interval=4)
    resumed.resume(tmp_path / "b" / "step-00000003")
    resumed.train()
    assert _metrics(tmp_path / "b" / "metrics.jsonl") == _metrics(tmp_path / "a" / "metrics.jsonl")


def test_resume_on_another_kind_of_data_is_refused_naming_both(tmp_path, tiny_config) -> None:
    """Issue 9, item 9: the data source is checkpointed; another one is refused, before its
    loader is handed a position that means nothing to it."""
    _trainer(tiny_config, tmp_path, 2, data_source="shards").train()
    other = _trainer(tiny_config, tmp_path, 4, data_source="synthetic")
    with pytest.raises(CheckpointError, match="trained on shards data but this run reads "
                                              "synthetic data"):
        other.resume(tmp_path / "step-00000002")
    assert other.step == 0 and other.dataloader.state_dict() == {"epoch": 0, "batch": 0}
    with pytest.raises(ConfigError, match="not a position of this loader"):
        other.dataloader.load_state_dict({"epoch": 0, "batches": 3, "consumed": [6]})


def test_with_grad_accum_the_task_fits_every_micro_batch(tiny_config) -> None:
    """Issue 9, item 10: each step's task is chosen from what all its micro-batches hold; here
    every step pairs a batch with transcript text and one without, so no text task."""
    dataset = TextOnEvenSamples(SyntheticMultimodalDataset(tiny_config, length=16, seed=0,
                                                            text_len=4))
    loader = build_dataloader(dataset, batch_size=1, shuffle=False)
    result = _trainer(tiny_config, None, 6, loader=loader, grad_accum=2).train()
    assert result.step == 6
    assert not any("text" in h["task"] for h in result.history)


def test_losses_are_read_once_per_record_not_once_per_step(tiny_config, monkeypatch) -> None:
    """Issue 10: reading a loss on the host waits for the device to finish the step, so the
    trainer and the model read none per step: the pending losses are read together, once
    per metrics record (16 steps, a record every 8: 2 reads)."""
    trainer = _trainer(tiny_config, None, 16, log_interval=8)
    reads: list[str] = []
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name):
            caller = sys._getframe(1).f_code.co_filename
            if f"omnilatent{os.sep}model" in caller or caller.endswith("trainer.py"):
                reads.append(f"{_name} in {caller}")
            return _real(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    result = trainer.train()
    monkeypatch.undo()
    assert len(reads) == 2, reads
    assert len(result.history) == 16 and all(math.isfinite(h["loss"]) for h in result.history)


def test_a_training_step_moves_nothing_between_host_and_device_but_its_batch(
        tiny_config, monkeypatch) -> None:
    """Issue 19, §4: after its batch is on the device, a step (forward, backward, optimizer,
    all 16 tasks) neither reads a device tensor nor copies host data to the device: no index
    tensor built from a list each forward (on CUDA a blocking copy). `HostSyncRecorder` sees on
    CPU the ops that would transfer or synchronise on CUDA."""
    trainer = _trainer(tiny_config, None, 16, log_interval=8)
    recorder = HostSyncRecorder([*trainer.model.parameters(), *trainer.model.buffers()])
    move = trainer_module.to_device_units

    def moved(*args, **kwargs):
        out = move(*args, **kwargs)
        recorder.mark_device([out])
        return out

    monkeypatch.setattr(trainer_module, "to_device_units", moved)
    step = trainer._train_step

    def recorded():
        with recorder:
            return step()

    trainer._train_step = recorded
    result = trainer.train()
    assert recorder.events == []
    assert sorted({h["task"] for h in result.history}) == sorted(
        task_name(s, t) for s in MODALITIES for t in MODALITIES)


def test_a_non_finite_loss_stops_the_run_before_a_later_checkpoint(tiny_config,
                                                                    tmp_path) -> None:
    """The loss of step 3 is read at step 4's record, before step 4's checkpoint: the error
    names step 3 and its task, and the last checkpoint is step 2's."""
    trainer = _trainer(tiny_config, tmp_path, 8, log_interval=4, save_every=2)
    forward, calls = trainer.forward_model, []

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls.append(args[0])
        return {**out, "loss": out["loss"] * math.nan} if len(calls) == 3 else out

    trainer.forward_model = poisoned
    with pytest.raises(OmniLatentError, match="loss became nan at step 3 \\(task "):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000002"]


def test_resume_with_more_steps_says_what_the_lr_schedule_does(tmp_path, tiny_config) -> None:
    """Issue 20, §2: a changed --steps recomputes warmup + cosine over the new total (as
    nanoGPT does with max_iters); the resume says so, with the lr at the step before and
    now."""
    _trainer(tiny_config, tmp_path, 30, warmup_steps=2).train()
    resumed = _trainer(tiny_config, tmp_path, 60, warmup_steps=2)
    resumed.callbacks = events = _Events()
    resumed.resume(tmp_path / "step-00000030")
    before = 1e-3 * lr_factor(30, 2, 30, resumed.config.min_lr_ratio)
    now = 1e-3 * lr_factor(30, 2, 60, resumed.config.min_lr_ratio)
    assert now > 2 * before
    changed = next(e for e in events.events if e.startswith("resuming with changed settings"))
    assert changed == ("resuming with changed settings: steps 30 -> 60; the learning-rate "
                       f"schedule is recomputed over 60 steps: lr at step 30 {before:.2e} -> "
                       f"{now:.2e}")
    resumed.release_save_dir()
    same = _trainer(tiny_config, tmp_path, 30, warmup_steps=2, log_interval=2)
    same.callbacks = quiet = _Events()
    same.resume(tmp_path / "step-00000030")
    assert not any("learning-rate" in e for e in quiet.events)  # only log_interval changed
    same.release_save_dir()


def _as_format_3(checkpoint: Path) -> None:
    """Rewrite ``checkpoint``'s state.json as the base commit's code wrote it (format 3: the
    sampler's state under "pair_sampler", a curriculum's under "extra"), hash included."""
    state = json.loads((checkpoint / STATE_FILE).read_text())
    state.update(format=3, pair_sampler=state.pop("sampler"), extra={})
    body = {k: v for k, v in state.items() if k != "state_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    state["state_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    (checkpoint / STATE_FILE).write_text(json.dumps(state, indent=1))


def test_a_format_3_checkpoint_resumes_exactly(tmp_path, tiny_config) -> None:
    """Issue 16: checkpoints of the previous format (the sampler's state under its old keys)
    keep loading, and the resumed run logs the uninterrupted run's losses."""
    whole = _trainer(tiny_config, tmp_path / "a", 4, save_every=2, keep_last=0).train()
    _as_format_3(tmp_path / "a" / "step-00000002")
    assert verify_checkpoint(tmp_path / "a" / "step-00000002")["format"] == 3
    resumed = _trainer(tiny_config, tmp_path / "b", 4)
    resumed.resume(tmp_path / "a" / "step-00000002")
    assert resumed.step == 2 and resumed.sampler.turn == 2
    assert [h["loss"] for h in resumed.train().history] == [h["loss"] for h in whole.history[2:]]
    curriculum = {"phase": "warmup", "round_robin": {"video_recon": 0.5}, "text_skipped": 1,
                  "phase_step": 3}
    assert upgrade({"pair_sampler": {"turn": 0}, "extra": curriculum})["sampler"] == {
        "phase": "warmup", "round_robin": {"video_recon": 0.5}, "text_skipped": 1}


def test_saving_hashes_each_checkpoint_once(tmp_path, tiny_config, monkeypatch) -> None:
    """Issue 16: pruning verifies the checkpoints it keeps by their recorded hashes once per
    run, not every kept checkpoint again at every save (GBs of SHA-256 per save)."""
    hashed: list[str] = []
    original = checkpoint_files._sha256

    def counting(path: Path) -> str:
        hashed.append(f"{re.search('step-[0-9]{8}', path.parent.name).group(0)}/{path.name}")
        return original(path)

    monkeypatch.setattr(checkpoint_files, "_sha256", counting)
    _trainer(tiny_config, tmp_path, 5, save_every=1, keep_last=3).train()
    assert sorted(hashed) == sorted(f"{step_dir_name(step)}/{name}" for step in range(1, 6)
                                    for name in ("model.safetensors", "training.pt"))
