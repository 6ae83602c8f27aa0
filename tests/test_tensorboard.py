from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from omnilatent import OmniLatentModel
from omnilatent.checkpoint.card import CheckpointCard
from omnilatent.evaluation.evaluate import evaluate
from omnilatent.inference.text import BYTE_CODEC
from omnilatent.training import SyntheticMultimodalDataset, build_dataloader
from omnilatent.training.tensorboard import TensorBoardCallbacks, flat_scalars, frame_grid
from pipeline.config import PrepareConfig


def _trainer(step: int, phases: tuple[str, ...] = (), card: CheckpointCard | None = None
             ) -> Any:
    """What the callbacks read of a trainer: its step, a curriculum's phase spans, its card."""
    spans = [SimpleNamespace(phase=SimpleNamespace(name=name)) for name in phases]
    return SimpleNamespace(step=step, sampler=SimpleNamespace(spans=spans), card=card)


def _record(step: int, loss: float, phase: str | None = None) -> dict[str, Any]:
    record = {"step": step, "loss": loss, "losses": {"video_to_audio": loss, "audio_to_text": 2.0},
              "lr": 1e-3, "tokens_per_s": 100.0, "samples_per_s": 4.0, "skipped_batches": 1,
              "data": {"samples": 30, "dropped": 10, "unsafe_members": 0,
                       "corrupt_shards": 0, "surplus_shards": 0}}
    if phase is not None:
        record["phase"] = phase
    return record


def _events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def test_records_and_evals_become_tagged_scalars(tmp_path) -> None:
    board = TensorBoardCallbacks(tmp_path)
    board.on_start(_trainer(0, ("warmup", "crossmodal", "joint")))
    board.on_log(_record(2, 1.5, "warmup"))
    board.on_log(_record(4, 1.0, "joint"))
    board.on_eval({"step": 4, "eval": {"samples": 8, "tasks": {"audio_to_video": {"loss": 0.5}},
                                       "retrieval": {"audio_to_video": {"r1": 0.25}},
                                       "text": {}}})
    board.close()
    assert list(tmp_path.glob("events.out.tfevents.*"))
    events = _events(tmp_path)
    tags = set(events.Tags()["scalars"])
    assert {"loss/all", "loss/video_to_audio", "loss/audio_to_text", "lr",
            "throughput/samples_per_s", "throughput/tokens_per_s", "data/skipped_batches",
            "data/samples", "data/dropped", "data/dropped_share", "phase", "eval/samples",
            "eval/tasks/audio_to_video/loss", "eval/retrieval/audio_to_video/r1"} <= tags
    assert [(e.step, e.value) for e in events.Scalars("loss/all")] == [(2, 1.5), (4, 1.0)]
    assert [e.value for e in events.Scalars("phase")] == [0, 2]  # index in the curriculum
    assert events.Scalars("data/dropped_share")[0].value == 0.25
    assert "phase/text_summary" in events.Tags()["tensors"]  # its name, when it changes


def test_a_resume_hides_the_events_after_its_checkpoint(tmp_path) -> None:
    """A killed run logged steps 1-4 after its checkpoint at step 2: resumed there, the
    steps 3-4 it logs again replace those, as metrics.jsonl's records do."""
    killed = TensorBoardCallbacks(tmp_path)
    killed.on_start(_trainer(0))
    for step in (1, 2, 3, 4):
        killed.on_log(_record(step, float(step)))
    killed.close()
    resumed = TensorBoardCallbacks(tmp_path)
    resumed.on_start(_trainer(2))
    for step in (3, 4):
        resumed.on_log(_record(step, 10.0 * step))
    resumed.close()
    logged = [(e.step, e.value) for e in _events(tmp_path).Scalars("loss/all")]
    assert logged == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]

    fresh = TensorBoardCallbacks(tmp_path)  # a new run from step 0 into the same folder
    fresh.on_start(_trainer(0))
    fresh.on_log(_record(1, 7.0))
    fresh.close()
    assert [(e.step, e.value) for e in _events(tmp_path).Scalars("loss/all")] == [(1, 7.0)]


def test_disabled_writes_nothing(tmp_path) -> None:
    board = TensorBoardCallbacks(tmp_path / "run", enabled=False)
    board.on_start(_trainer(0))
    board.on_log(_record(1, 1.0))
    board.on_eval({"step": 1, "eval": {"samples": 1}})
    board.close()
    assert not (tmp_path / "run").exists()


def test_flat_scalars_keeps_numbers_only() -> None:
    tree = {"a": {"b": 1, "c": [1, 2], "d": True}, "e": 0.5, "f": "text"}
    assert flat_scalars("eval", tree) == {"eval/a/b": 1.0, "eval/e": 0.5}


def test_eval_predictions_become_images_at_the_eval_step(tmp_path, tiny_config) -> None:
    """`evaluate` keeps the first windows' predicted image, video and mel; the callbacks log
    them as images (a video's frames side by side) at the eval record's step."""
    held_out = []
    dataset = SyntheticMultimodalDataset(tiny_config, length=6, seed=5, text_len=6)
    for batch in build_dataloader(dataset, batch_size=3, seed=1):
        keys = [f"held-{len(held_out)}-{i}" for i in range(3)]
        held_out.append({**batch, "__key__": keys, "meta": [{"source": k} for k in keys]})
    report = evaluate(OmniLatentModel(tiny_config), held_out, BYTE_CODEC)
    assert {name: tuple(x.shape) for name, x in report.samples.items()} == {
        "audio_to_image": (2, 3, 32, 32), "audio_to_video": (2, 3, 8, 32, 32),
        "video_to_audio": (2, 16, 24)}

    board = TensorBoardCallbacks(tmp_path)
    board.on_start(_trainer(0))
    board.eval_samples(report.samples)
    board.on_eval({"step": 6, "eval": report.metrics})
    board.close()
    events = _events(tmp_path)
    shapes = {tag: [(e.step, e.width, e.height) for e in events.Images(tag)]
              for tag in events.Tags()["images"]}
    # the 2 windows side by side; a video's 8 frames in a 3 x 3 grid (issue 20, §3: not an
    # 8-frame strip) with 2 px between them, a mel's 24 frames wide
    grid = 3 * (32 + 2) + 2
    assert shapes == {"eval/audio_to_image": [(6, 2 * 32, 32)],
                      "eval/audio_to_video": [(6, 2 * grid, grid)],
                      "eval/video_to_audio": [(6, 2 * 24, 16)]}
    assert events.Tags()["audio"] == []  # synthetic data: the mels have no sample rate


def test_eval_mels_become_audio_at_the_data_sample_rate(tmp_path) -> None:
    """With the card of prepared data, each predicted mel window is also Griffin-Lim audio of
    T * hop samples at the data's sample rate, at the eval record's step."""
    data = PrepareConfig(n_mels=16, sample_rate=8000, n_fft=200, hop_length=80)
    board = TensorBoardCallbacks(tmp_path)
    board.on_start(_trainer(0, card=CheckpointCard(data_config=data.to_dict())))
    mels = torch.randn(2, 16, 24)  # (N, M, T) model units
    board.eval_samples({"video_to_audio": mels, "audio_to_image": torch.zeros(2, 3, 8, 8)})
    board.on_eval({"step": 4, "eval": {}})
    board.close()
    events = _events(tmp_path)
    assert sorted(events.Tags()["audio"]) == ["eval/video_to_audio/0", "eval/video_to_audio/1"]
    for tag in events.Tags()["audio"]:
        (clip,) = events.Audio(tag)
        assert (clip.step, clip.sample_rate, clip.length_frames) == (4, 8000, 24 * 80)


def test_a_video_becomes_a_grid_of_its_frames_in_reading_order() -> None:
    """32 frames of 112 px (the demo's prediction): 6 x 6, not a 3584 x 112 strip."""
    video = torch.arange(32.0).view(1, 32, 1, 1).expand(3, 32, 112, 112) / 31
    grid = frame_grid(video)
    assert tuple(grid.shape) == (3, 6 * 114 + 2, 6 * 114 + 2)
    for index in (0, 5, 6, 31):  # row-major: frame 6 opens the second row
        row, column = divmod(index, 6)
        y, x = 2 + row * 114, 2 + column * 114
        assert torch.allclose(grid[:, y:y + 112, x:x + 112], video[:, index])
