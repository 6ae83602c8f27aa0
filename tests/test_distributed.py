"""Training under torchrun on CPU (gloo): DDP equals one process with the global batch, and
FSDP2 checkpoints keep the single-process format."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.errors import CheckpointError
from omnilatent.training import TrainConfig, Trainer
from omnilatent.training.checkpoint import load_checkpoint
from omnilatent.training.trainer import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
# no text target: its loss is a mean over each rank's tokens, which DDP averages per rank
SCHEDULE = {"phases": [{"name": "av", "share": 1.0, "tasks": [
    "video_recon", "audio_recon", "video_to_audio", "audio_to_video", "image_to_audio",
    "audio_to_image"]}]}
MODEL = ["--dim", "32", "--layers", "2", "--heads", "4"]


def _train(tmp_path: Path, save_dir: Path, processes: int, batch: int,
           *extra: str) -> subprocess.Popen:
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps(SCHEDULE))
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                 str(processes), "--standalone"] if processes > 1 else [sys.executable])
    args = [*launcher, "-m", "cli.app", "train", "--synthetic", "--phase-schedule",
            str(schedule), "--steps", "10", "--batch-size", str(batch), *MODEL, "--device",
            "cpu", "--lr", "1e-3", "--log-interval", "5", "--save-dir", str(save_dir), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its ranks in sessions of their own)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _finish(process: subprocess.Popen) -> None:
    out, _ = process.communicate(timeout=180)
    assert process.returncode == 0, out[-3000:]


def test_two_processes_of_batch_2_train_like_one_of_batch_4(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    runs = [_train(tmp_path, one, 1, 4), _train(tmp_path, two, 2, 2)]
    for run in runs:
        _finish(run)
    a = load_checkpoint(one / "step-00000010")
    b = load_checkpoint(two / "step-00000010")
    for name, value in a.model_state.items():
        torch.testing.assert_close(b.model_state[name], value, rtol=1e-4, atol=1e-5)
    losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").open()]
              for run in (one, two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)  # all-reduced means, logged once
    assert b.state["distributed"]["world_size"] == 2
    assert len(b.state["distributed"]["ranks"]) == 2
    # one process cannot continue a run of two: each rank's data position is its own
    model = OmniLatentModel(OmniLatentConfig.from_dict(b.state["model_config"]))
    trainer = Trainer(model, TrainConfig(steps=10, device="cpu"), [])
    with pytest.raises(CheckpointError, match="2 process"):
        trainer.check_compatible(two / "step-00000010", b.state)


def test_fsdp_checkpoint_loads_in_one_process(tmp_path: Path) -> None:
    save_dir = tmp_path / "fsdp"
    _finish(_train(tmp_path, save_dir, 2, 2, "--fsdp"))
    ckpt = load_checkpoint(save_dir / "step-00000010")
    model = OmniLatentModel(OmniLatentConfig.from_dict(ckpt.state["model_config"]))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ckpt.model_state)  # full tensors under the single-process names
    assert any(not torch.equal(fresh[k], v) for k, v in model.state_dict().items())
    optimizer = build_optimizer(model, TrainConfig(steps=10, device="cpu"))
    optimizer.load_state_dict(ckpt.training_state["optimizer"])  # integer keys, as one process
    assert len(optimizer.state) == len(ckpt.training_state["optimizer"]["state"]) > 0


def test_killing_the_whole_job_then_resume_auto_gives_the_uninterrupted_parameters(
        tmp_path: Path) -> None:
    """kill -9 of torchrun and both ranks after a checkpoint; `--resume auto` on two processes
    ends with the parameters and records of a job that was never stopped."""
    common = ("--steps", "60", "--save-every", "10", "--keep-last", "0")
    _finish(_train(tmp_path, tmp_path / "straight", 2, 2, *common))
    killed = _train(tmp_path, tmp_path / "killed", 2, 2, *common)
    deadline = time.monotonic() + 150
    while not (tmp_path / "killed" / "step-00000010").exists():
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    for pid in [killed.pid, *_descendants(killed.pid)]:  # the launcher and every rank
        os.kill(pid, signal.SIGKILL)
    killed.communicate()
    assert not (tmp_path / "killed" / "step-00000060").exists()
    _finish(_train(tmp_path, tmp_path / "killed", 2, 2, *common, "--resume", "auto"))
    a = load_checkpoint(tmp_path / "straight" / "step-00000060")
    b = load_checkpoint(tmp_path / "killed" / "step-00000060")
    assert a.model_state.keys() == b.model_state.keys()
    assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
    records = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").open()]
               for run in (tmp_path / "straight", tmp_path / "killed")]
    assert records[0] == records[1] and len(records[0]) == 12
