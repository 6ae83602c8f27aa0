"""The seed's own snippets run as its README wrote them (issue 11 §1), `.cuda()` removed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from media import make_video
from torch.utils.data import DataLoader

from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.errors import ConfigError
from omnilatent.training import SyntheticMultimodalDataset, TrainConfig, Trainer
from omnilatent.training.data import collate_multimodal
from omnilatent.training.video_dataset import VideoWatchingDataset, collate_video_watching
from pipeline.loader.samples import to_tensors
from pipeline.tokenizer import BYTE_VOCAB_SIZE
from tests.conftest import TINY

SEED_TRAINING = dict(batch_size=4, learning_rate=3e-4, max_steps=100_000, mixed_precision=True)
# sizes that raw videos decoded at 4 fps, 32 px and 16 mel bins give (2 s clips)
VIDEO_MODEL = dict(hidden_dim=32, num_layers=1, num_heads=4, vocab_size=BYTE_VOCAB_SIZE,
                   n_mels=16, image_size=32, patch_size=16, video_size=32, video_frames=8)


def test_the_seed_config_carries_training_defaults_apart_from_the_model() -> None:
    config = OmniLatentConfig(**SEED_TRAINING, gradient_checkpointing=True)
    train = TrainConfig.from_model_config(config)
    assert (train.lr, train.steps, train.amp) == (3e-4, 100_000, True)
    assert train.weight_decay == TrainConfig().weight_decay  # unset: the trainer's default
    # not the model's: not in the checkpoint's model config, not in equality
    assert not set(SEED_TRAINING) & set(config.to_dict())
    assert config == OmniLatentConfig(gradient_checkpointing=True)
    assert OmniLatentConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown OmniLatentConfig field.*batch_size"):
        OmniLatentConfig.from_dict({**config.to_dict(), "batch_size": 4})
    with pytest.raises(ConfigError, match="batch_size must be"):
        OmniLatentConfig(batch_size=0)
    with pytest.raises(ConfigError, match="learning_rate must be"):
        OmniLatentConfig(learning_rate=-1.0)
    with pytest.raises(ConfigError, match="warmup_steps must lie in"):  # TrainConfig's check
        TrainConfig.from_model_config(OmniLatentConfig(max_steps=10, warmup_steps=20))


def test_trainer_takes_the_model_config_and_a_plain_dataloader() -> None:
    config = OmniLatentConfig(**TINY, batch_size=2, learning_rate=1e-3, max_steps=3)
    torch.manual_seed(0)
    model = OmniLatentModel(config)
    before = [p.detach().clone() for p in model.parameters()]
    dataloader = DataLoader(SyntheticMultimodalDataset(config, length=8), shuffle=True,
                            batch_size=config.batch_size, collate_fn=collate_multimodal)
    trainer = Trainer(model, config, dataloader)
    assert (trainer.config.steps, trainer.config.lr) == (3, 1e-3)
    result = trainer.train()
    assert result.step == 3 and len(result.history) == 3
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_trainer_refuses_the_config_of_another_model() -> None:
    model = OmniLatentModel(OmniLatentConfig(**TINY))
    with pytest.raises(ConfigError, match="another model.*hidden_dim 64"):
        Trainer(model, OmniLatentConfig(**{**TINY, "hidden_dim": 64}), [])


def test_resume_with_a_plain_dataloader_warns_that_the_data_order_is_not_exact(
        tiny_config, tmp_path) -> None:
    def trainer(steps: int) -> Trainer:
        loader = DataLoader(SyntheticMultimodalDataset(tiny_config, length=8), batch_size=2,
                            shuffle=True, collate_fn=collate_multimodal)
        return Trainer(OmniLatentModel(tiny_config),
                       TrainConfig(steps=steps, save_dir=tmp_path, device="cpu"), loader)

    first = trainer(2).train()
    assert first.last_checkpoint is not None
    with pytest.warns(UserWarning, match="keeps no position.*2 batches"):
        trainer(3).resume(first.last_checkpoint)


def test_curriculum_trainer_imports_from_the_seed_path_once_installed(tmp_path) -> None:
    """`from curriculum_train import CurriculumTrainer` from any folder: the module is
    installed with the package (pyproject's py-modules), not just found in the checkout."""
    from curriculum_train import CurriculumTrainer
    from omnilatent.training.curriculum import CurriculumTrainer as Library

    assert CurriculumTrainer is Library
    found = subprocess.run([sys.executable, "-c", "import curriculum_train; "
                            "print(curriculum_train.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True)
    assert Path(found.stdout.strip()) == Path(__file__).parents[1] / "curriculum_train.py"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seed") / "videos"
    root.mkdir()
    make_video(root / "a.mp4", duration=5.0, size=(64, 48))  # 4 windows of 2 s, stride 1 s
    make_video(root / "b.mkv", duration=4.0, size=(64, 48), tone_hz=880.0)  # 3 windows
    (root / "a.srt").write_text("1\n00:00:02,000 --> 00:00:03,000\nhello there\n",
                                encoding="utf-8")
    return root


def _dataset(videos: Path) -> VideoWatchingDataset:
    config = OmniLatentConfig(**VIDEO_MODEL)
    return VideoWatchingDataset(video_dir=videos, config=config, clip_duration=2.0,
                                clip_stride=1.0)


def test_video_watching_dataset_is_map_style_one_window_per_index(videos) -> None:
    dataset = _dataset(videos)
    assert len(dataset) == 4 + 3
    sample = dataset[0]
    assert sample["video"].shape == (8, 32, 32, 3) and sample["video"].dtype == torch.uint8
    assert sample["image"].shape == (32, 32, 3) and sample["audio"].shape == (16, 200)
    # each index decodes its own window: bit for bit the window of a whole-video decode
    streamed = {s["__key__"]: s for source in dataset.videos
                for s in to_tensors(dataset.video_samples(source), dataset.tokenizer_fn,
                                    dataset.max_text_len)}
    indexed = [dataset[i] for i in range(len(dataset))]
    assert sorted(s["__key__"] for s in indexed) == sorted(streamed)
    for s in indexed:
        twin = streamed[s["__key__"]]
        for modality in ("video", "image", "audio", "text"):
            assert torch.equal(s[modality], twin[modality]), (s["__key__"], modality)
        assert s["meta"] == twin["meta"]
    assert dataset[-1]["__key__"] == indexed[-1]["__key__"]
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_the_seed_video_snippet_shuffles_with_workers(videos) -> None:
    dataset = _dataset(videos)
    dataloader = DataLoader(dataset, batch_size=4, shuffle=True,
                            collate_fn=collate_video_watching, num_workers=2)
    batches = list(dataloader)
    keys = [key for batch in batches for key in batch["__key__"]]
    assert sorted(keys) == sorted(dataset[i]["__key__"] for i in range(len(dataset)))
    assert batches[0]["video"].shape == (4, 3, 8, 32, 32)  # (B, 3, T, H, W) uint8
    assert batches[0]["audio"].dtype == torch.float16


def test_the_seed_curriculum_snippet_trains_on_the_video_dataset(videos, tmp_path) -> None:
    from curriculum_train import CurriculumTrainer

    dataset = _dataset(videos)
    config = OmniLatentConfig(**VIDEO_MODEL)
    torch.manual_seed(0)
    model = OmniLatentModel(config)
    dataloader = DataLoader(dataset, batch_size=4, shuffle=True,
                            collate_fn=collate_video_watching)
    trainer = CurriculumTrainer(model=model, config=config, dataloader=dataloader,
                                total_steps=3, save_dir=tmp_path / "checkpoints")
    result = trainer.train()
    assert result.step == 3 and all(math.isfinite(h["loss"]) for h in result.history)
    assert result.last_checkpoint == tmp_path / "checkpoints" / "step-00000003"


def test_the_seed_script_runs_the_curriculum(tmp_path) -> None:
    """Issue 20, §4: `python curriculum_train.py --synthetic --total-steps N` trains the
    default curriculum (it printed nothing and exited 0), saying which `omni` command it is."""
    save = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "curriculum_train.py"), "--synthetic",
         "--total-steps", "2", "--dim", "32", "--layers", "1", "--heads", "4", "--batch-size",
         "2", "--log-interval", "1", "--save-dir", str(save)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "curriculum_train.py runs: omni train --phase-schedule default --synthetic" in (
        done.stdout)
    records = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["phase"]) for r in records] == [(1, "crossmodal"), (2, "joint")]
    bad = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "curriculum_train.py"),
                          "--total-steps", "2"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "choose exactly one data source" in bad.stdout + bad.stderr
