"""Issue 18 §3: `omni demo-videos --realistic` gives the world the gaps of real video, and
prepare, the loader and a training step take them without dropping a window."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from typer.testing import CliRunner

from cli.app import app
from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.evaluation.evaluate import evaluate
from omnilatent.inference.text import BYTE_CODEC
from omnilatent.tasks import build_task
from omnilatent.training import TrainConfig, Trainer
from omnilatent.training.rng import seed_everything
from pipeline.config import PrepareConfig
from pipeline.demo_media import REALISTIC_KINDS, make_demo_videos
from pipeline.loader.shard_loader import build_shard_loader
from pipeline.media.subtitles import load_sidecar
from pipeline.prepare.run import RunOptions, prepare

COUNT = len(REALISTIC_KINDS)  # one video of each kind
runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real") / "videos"
    result = runner.invoke(app, ["demo-videos", str(out), "--count", str(COUNT), "--seed", "3",
                                 "--duration", "2", "--realistic"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "no transcript" in result.output and "no audio" in result.output
    return out


def _streams(path: Path) -> tuple[bool, float, float]:
    """(has an audio stream, frame rate, duration in seconds) of a written video."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        return (bool(container.streams.audio), float(video.average_rate),
                container.duration / 1e6)


def test_realistic_world_has_the_promised_mix_and_repeats_per_seed(world: Path,
                                                                   tmp_path: Path) -> None:
    videos = sorted(world.glob("*.mp4"))
    assert len(videos) == COUNT
    facts = {path: _streams(path) for path in videos}
    sidecars = {path: next(iter(sorted(world.glob(f"{path.stem}.*t"))), None) for path in videos}
    assert sum(not audio for audio, _, _ in facts.values()) == 1  # no audio stream
    assert sum(sidecar is None for sidecar in sidecars.values()) == 1  # no transcript
    partial = 0
    for path, sidecar in sidecars.items():
        if sidecar is None:
            continue
        cues = load_sidecar(sidecar).cues
        covered = sum(cue.end - cue.start for cue in cues)
        partial += covered < 0.75 * facts[path][2]  # speech over part of the video
    assert partial == 2
    assert len({round(rate) for _, rate, _ in facts.values()}) > 1  # frame rates vary
    assert len({round(length, 1) for _, _, length in facts.values()}) > 1  # lengths vary
    assert min(length for _, _, length in facts.values()) >= 1.9  # at least one clip
    again = make_demo_videos(tmp_path / "again", count=COUNT, seed=3, duration=2.0,
                             realistic=True)
    assert {v.path.name: v.path.read_bytes() for v in again} == {
        p.name: p.read_bytes() for p in videos}


def test_windows_without_sound_or_transcript_load_flagged_and_train(world: Path,
                                                                    tmp_path: Path) -> None:
    config = PrepareConfig(fps=4, video_size=32, image_size=32, n_mels=16, clip_stride=2.0)
    result = prepare(world, tmp_path / "out", config, RunOptions(workers=1))
    assert result.totals.prepared == COUNT
    loader = build_shard_loader(tmp_path / "out", batch_size=64, shuffle_shards=False,
                                shuffle_buffer=0, epochs=1)
    batch = next(iter(loader))
    assert loader.stats.dropped == 0 and len(batch["__key__"]) == result.totals.clips
    no_audio = [not m["has_audio"] for m in batch["meta"]]
    assert batch["has_audio"].tolist() == [not x for x in no_audio] and any(no_audio)
    untranscribed = [m["transcript_source"] == "none" for m in batch["meta"]]
    assert any(untranscribed) and not any(batch["has_text"][untranscribed])

    model_config = OmniLatentConfig(hidden_dim=32, num_layers=1, num_heads=4, vocab_size=300,
                                    n_mels=16, audio_frames=batch["audio"].shape[-1],
                                    image_size=32, patch_size=16, video_size=32,
                                    video_frames=batch["video"].shape[1])  # I420 (B, T, 3H/2, W)
    for name, rows in (("video_to_audio", batch["has_audio"]),
                       ("audio_to_text", batch["has_audio"] & batch["has_text"]),
                       ("image_to_text", batch["has_text"])):
        seed_everything(0)
        trainer = Trainer(OmniLatentModel(model_config), TrainConfig(steps=1), [batch])
        task = build_task(name, model_config.tubelet_size)
        trainer.sampler.select = lambda *args, task=task: task
        outcome = trainer._train_step()
        assert outcome is not None and outcome[2] == int(rows.sum()) < len(rows), name

    # evaluation measures each task only where its source and target exist
    metrics = evaluate(OmniLatentModel(model_config), [batch], BYTE_CODEC).metrics
    assert metrics["samples"] == len(batch["__key__"])
    assert metrics["retrieval"]["video_to_audio"]["queries"] == int(batch["has_audio"].sum())
    with_both = batch["has_audio"] & batch["has_text"]
    assert metrics["text"]["audio_to_text"]["tokens"] == int(batch["text"][with_both].ne(0).sum())
