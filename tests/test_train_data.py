"""Training from prepared shards and from raw videos (issue: curriculum from shards)."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from media import make_video, read_samples
from typer.testing import CliRunner

from cli.app import app
from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.checkpoint.files import verify_checkpoint
from omnilatent.config import model_sizes
from omnilatent.errors import CheckpointError, ConfigError
from omnilatent.evaluation.evaluate import check_shards_fit
from omnilatent.inference.trained import load_trained
from omnilatent.training import TrainConfig
from omnilatent.training.curriculum import CurriculumTrainer
from omnilatent.training.rng import seed_everything
from omnilatent.training.sources import shard_source
from omnilatent.training.video_dataset import VideoWatchingDataset, video_watching_loader
from pipeline.config import PrepareConfig
from pipeline.prepare.run import RunOptions, prepare
from pipeline.shards.schema import expected_from_config
from pipeline.tokenizer import byte_detokenize, byte_tokenizer

runner = CliRunner()
SRT = "1\n00:00:02,000 --> 00:00:03,000\nhello there\n\n2\n00:00:04,500 --> 00:00:05,000\nbye\n"


def _videos(root: Path, transcripts: bool) -> Path:
    root.mkdir()
    make_video(root / "a.mp4", duration=5.0, size=(64, 48))
    make_video(root / "b.mkv", duration=4.0, size=(64, 48), tone_hz=880.0)
    if transcripts:
        (root / "a.srt").write_text(SRT, encoding="utf-8")
        (root / "b.txt").write_text("one two three four", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("data")
    videos = _videos(base / "videos", transcripts=True)
    result = prepare(videos, base / "out", PrepareConfig(samples_per_shard=4),
                     RunOptions(workers=2))
    assert result.manifest is not None
    return videos, base / "out"


class _Recording:
    """Wraps a loader and records the keys of every batch it hands out."""

    def __init__(self, loader) -> None:
        self.loader, self.keys = loader, []

    def __iter__(self):
        for batch in self.loader:
            self.keys.append(list(batch["__key__"]))
            yield batch

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state) -> None:
        self.loader.load_state_dict(state)


def _trainer(out: Path, save_dir: Path, steps: int) -> tuple[CurriculumTrainer, _Recording]:
    seed_everything(0)
    source = shard_source(str(out), 2, seed=0, workers=0, tokenizer=byte_tokenizer,
                          max_text_len=32)
    cfg = OmniLatentConfig(hidden_dim=32, num_layers=1, num_heads=4, vocab_size=300,
                           **model_sizes(source.expected))
    loader = _Recording(source.loader)
    trainer = CurriculumTrainer(OmniLatentModel(cfg), TrainConfig(log_interval=1, lr=1e-3),
                                loader, total_steps=steps, save_dir=save_dir,
                                corpus_has_text=source.corpus_has_text)
    return trainer, loader


def test_curriculum_over_shards_resumes_inside_a_phase_bit_identically(prepared,
                                                                        tmp_path) -> None:
    _, out = prepared
    steps = 12  # 7 samples per epoch / batch 2: crosses epochs and every phase boundary
    straight, seen_a = _trainer(out, tmp_path / "a", steps)
    result_a = straight.train()
    phases = [r["phase"] for r in map(json.loads,
                                      (tmp_path / "a" / "metrics.jsonl").read_text().splitlines())]
    assert phases[0] == "warmup" and phases[-1] == "joint"
    assert len(set(phases)) == 5

    first, _ = _trainer(out, tmp_path / "b", steps)
    first.train(should_stop=lambda: first.step >= 6)
    phase = first.sampler.span_at
    assert phase(5).phase.name == phase(6).phase.name == "grounding"  # inside a phase
    resumed, seen_b = _trainer(out, tmp_path / "b", steps)
    resumed.resume(tmp_path / "b" / "step-00000006")
    result_b = resumed.train()

    assert seen_a.keys[6:] == seen_b.keys  # the same samples in the same order
    assert [h["loss"] for h in result_a.history][6:] == [h["loss"] for h in result_b.history]
    assert [h["task"] for h in result_a.history][6:] == [h["task"] for h in result_b.history]
    for (name, x), (_, y) in zip(straight.model.state_dict().items(),
                                 resumed.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_manifest_sizes_must_fit_the_model(prepared, tmp_path) -> None:
    """The check `omni eval` and training's evaluator run on shards: the sizes the folder's
    manifest states against the model's, a mismatch refused naming the field. A checkpoint
    trained at one size is refused by a model of another."""
    _, out = prepared
    fitting = OmniLatentConfig(hidden_dim=32, num_layers=1, num_heads=4,
                               **model_sizes(expected_from_config(PrepareConfig())))
    assert check_shards_fit(str(out), None, OmniLatentModel(fitting)).sample_counts
    narrow = OmniLatentModel(dataclasses.replace(fitting, video_size=64))
    with pytest.raises(ConfigError, match="data video_size=112 but model video_size=64"):
        check_shards_fit(str(out), None, narrow)
    trainer, _ = _trainer(out, tmp_path / "c", 2)
    trainer.train()
    other = CurriculumTrainer(
        OmniLatentModel(OmniLatentConfig(hidden_dim=32, num_layers=1, num_heads=4,
                                         vocab_size=300, image_size=112)),
        TrainConfig(), trainer.dataloader, total_steps=2)
    with pytest.raises(CheckpointError, match="image_size"):
        other.resume(tmp_path / "c" / "step-00000002")


def test_omni_train_shards_end_to_end(prepared, tmp_path) -> None:
    _, out = prepared
    save = tmp_path / "run"
    result = runner.invoke(app, ["train", "--shards", str(out), "--phase-schedule", "default",
                                 "--steps", "10", "--batch-size", "2", "--dim", "32",
                                 "--layers", "1", "--heads", "4", "--log-interval", "1",
                                 "--save-dir", str(save)])
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (save / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == (["warmup"] + ["crossmodal"] * 2 + ["temporal"]
                                             + ["grounding"] * 3 + ["joint"] * 3)
    assert (save / "step-00000010" / "model.safetensors").is_file()
    for phase in ("warmup", "crossmodal", "temporal", "grounding", "joint"):
        assert f"phase '{phase}'" in result.output


def test_corpus_without_transcripts_is_announced(tmp_path) -> None:
    videos = _videos(tmp_path / "videos", transcripts=False)
    prepare(videos, tmp_path / "out", PrepareConfig(), RunOptions(workers=1))
    result = runner.invoke(app, ["train", "--shards", str(tmp_path / "out"), "--steps", "8",
                                 "--batch-size", "2", "--dim", "32", "--layers", "1",
                                 "--heads", "4", "--log-interval", "1",
                                 "--save-dir", str(tmp_path / "run")], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "the corpus has no transcripts: text tasks are skipped" in result.output
    assert ("phase 'grounding' trains audio_recon, audio_to_video, temporal, video_recon, "
            "video_to_audio instead of audio_to_text, video_to_text") in result.output
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 8 and {r["phase"] for r in records} >= {"grounding", "joint"}
    assert not [task for r in records for task in r["losses"] if "text" in task]


def test_video_watching_dataset_uses_the_prepare_pipeline(prepared) -> None:
    videos, out = prepared
    cfg = OmniLatentConfig(hidden_dim=32, num_layers=1, num_heads=4)
    dataset = VideoWatchingDataset(videos, cfg, clip_duration=2.0, clip_stride=1.0,
                                   tokenizer_fn=byte_tokenizer)
    samples = {s["__key__"]: s for s in dataset}
    assert len(samples) == 4 + 3  # 5 s and 4 s videos: floor((D - 2) / 1) + 1 clips each
    by_start = {(s["meta"]["source"], s["meta"]["start"]): s for s in samples.values()}
    texts = {k: byte_detokenize(v["text"].tolist()) for k, v in by_start.items()}
    assert texts[("a.mp4", 0.0)] == "" and texts[("a.mp4", 1.0)] == "hello there"
    assert texts[("a.mp4", 2.0)] == "hello there" and texts[("a.mp4", 3.0)] == "bye"
    assert by_start[("b.mkv", 0.0)]["meta"]["transcript_timed"] is False
    assert "one" in texts[("b.mkv", 0.0)]
    # the same samples as the prepared shards: keys, texts and (lossless) mels
    shards = read_samples(out)
    assert set(shards) == set(samples)
    for key, sample in samples.items():
        assert byte_detokenize(sample["text"].tolist()) == shards[key]["txt"].decode("utf-8")
        np.testing.assert_array_equal(sample["audio"].numpy(),
                                      np.load(io.BytesIO(shards[key]["mel.npy"])))

    loader = video_watching_loader(dataset, batch_size=3)
    batches = list(loader)
    assert batches[0]["video"].shape == (3, 3, 16, 112, 112)
    assert batches[0]["image"].shape == (3, 224, 224, 3)  # channels last, as the shard loader
    assert batches[0]["audio"].shape == (3, 128, 200)
    assert batches[0]["video"].dtype == torch.uint8  # stored dtypes, as the shard loader's
    assert batches[0]["audio"].dtype == torch.float16
    again = video_watching_loader(dataset, batch_size=3)
    again.load_state_dict({"epoch": 0, "batches": 1, "workers": 0})
    assert [b["__key__"] for b in again] == [b["__key__"] for b in batches[1:]]


def test_omni_train_video_dir(prepared, tmp_path) -> None:
    """A run on raw videos logs every step, and its checkpoint says what it read: the data
    source (which a resume checks) and the clip settings asked for, with which `omni eval`
    and `omni generate` decode their inputs."""
    videos, _ = prepared
    save = tmp_path / "run"
    result = runner.invoke(app, ["train", "--video-dir", str(videos), "--steps", "3",
                                 "--clip-stride", "1.5", "--batch-size", "2", "--dim", "32",
                                 "--layers", "1", "--heads", "4", "--log-interval", "1",
                                 "--save-dir", str(save)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert f"2 video(s) from {videos}, decoded on the fly" in result.output
    records = [json.loads(x) for x in (save / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert verify_checkpoint(save / "step-00000003")["data"]["source"] == "video-dir"
    trained = load_trained(save)
    assert trained.step == 3
    assert (trained.data_config.clip_duration, trained.data_config.clip_stride) == (2.0, 1.5)


def test_two_data_sources_are_refused(prepared, tmp_path) -> None:
    videos, out = prepared
    result = runner.invoke(app, ["train", "--shards", str(out), "--video-dir", str(videos),
                                 "--save-dir", str(tmp_path)])
    assert result.exit_code == 2 and "exactly one data source" in result.output


def test_resume_on_another_data_source_is_refused_naming_both(prepared, tmp_path) -> None:
    """Issue 9, item 9: not a KeyError from the other loader (--synthetic), nor a silent
    switch of data (--video-dir)."""
    videos, out = prepared
    common = ["--batch-size", "2", "--dim", "32", "--layers", "1", "--heads", "4",
              "--save-dir", str(tmp_path)]
    first = runner.invoke(app, ["train", "--shards", str(out), "--steps", "2", *common])
    assert first.exit_code == 0, first.output
    for source, name in ((["--synthetic"], "synthetic"),
                         (["--video-dir", str(videos)], "video-dir")):
        again = runner.invoke(app, ["train", *source, "--steps", "3", "--resume", "auto",
                                    *common], env={"COLUMNS": "400"})
        assert again.exit_code == 1, again.output
        assert isinstance(again.exception, SystemExit)
        assert f"was trained on shards data but this run reads {name} data" in again.output
    assert not (tmp_path / "step-00000003").exists()
