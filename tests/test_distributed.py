"""Training under torchrun on CPU (gloo): DDP equals one process with the global batch, and
FSDP2 checkpoints are sharded, resume exactly and load in one process."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.checkpoint.files import _state_hash, load_checkpoint
from omnilatent.errors import CheckpointError
from omnilatent.inference.trained import load_trained
from omnilatent.training import TrainConfig, Trainer

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


def _finish(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=180)
    assert process.returncode == 0, out[-3000:]
    return out


def test_two_processes_of_batch_2_train_like_one_of_batch_4(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    runs = [_train(tmp_path, one, 1, 4), _train(tmp_path, two, 2, 2)]
    outputs = [_finish(run) for run in runs]
    # issue 20, §2: the set-up lines, as every line, come from rank 0 alone
    for out in outputs:
        lines = out.splitlines()
        for header in ("data: ", "tensorboard: ", "model: "):
            assert sum(line.startswith(header) for line in lines) == 1, (header, out)
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
        trainer.checkpointer.check_compatible(two / "step-00000010", b.state)


def _resign(folder: Path, changed: str) -> None:
    """Record ``changed``'s new size and hash in the manifest, as if omni had written it."""
    state = json.loads((folder / "state.json").read_text())
    data = (folder / changed).read_bytes()
    state["files"][changed] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    state["state_sha256"] = _state_hash(state)
    (folder / "state.json").write_text(json.dumps(state))


def test_fsdp_saves_shards_that_resume_exactly_and_load_in_one_process(tmp_path: Path) -> None:
    """Under --fsdp each rank writes its own shards (no full tensors on rank 0, nothing to
    unpickle); --resume on 2 processes gives the uninterrupted run's losses and weights; one
    process loads the weights (load_trained, --from) but cannot --resume."""
    common = ("--steps", "20", "--save-every", "10", "--keep-last", "0", "--fsdp")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _finish(_train(tmp_path, straight, 2, 2, *common))
    ckpt = straight / "step-00000010"
    state = json.loads((ckpt / "state.json").read_text())
    written = {str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file()}
    assert state["format"] == 5 and set(state["files"]) == written - {"state.json"}
    assert sorted(p.name for p in (ckpt / "shards").iterdir()) == [
        f"shard-0000{r}-model-00001-of-00001.safetensors" for r in (1, 2)]
    assert "model.safetensors" not in written
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "step-00000020")
    _finish(_train(tmp_path, resumed, 2, 2, *common, "--resume", "auto"))
    losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").open()]
              for run in (straight, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    a, b = (load_trained(run / "step-00000020").model.state_dict() for run in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = OmniLatentModel(OmniLatentConfig.from_dict(state["model_config"])).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in a.items())
    trainer = Trainer(OmniLatentModel(OmniLatentConfig.from_dict(state["model_config"])),
                      TrainConfig(steps=10, device="cpu"), [])
    with pytest.raises(CheckpointError, match="2 process.*--from"):
        trainer.checkpointer.check_compatible(ckpt, state)
    _finish(_train(tmp_path, tmp_path / "one", 1, 2, "--steps", "2", "--from", str(ckpt)))
    # a shard whose header disagrees with the model is refused before anything is loaded
    shard = ckpt / "shards" / "shard-00001-model-00001-of-00001.safetensors"
    with safe_open(str(shard), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    name = next(k for k in tensors if k.startswith("model.") and tensors[k].dim() == 2)
    tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] + 1)
    save_file(tensors, str(shard), metadata=meta)
    _resign(ckpt, "shards/" + shard.name)
    with pytest.raises(CheckpointError, match="does not hold the tensors"):
        load_trained(ckpt)


def test_fsdp_resumes_a_checkpoint_of_the_unsharded_format(tmp_path: Path) -> None:
    """A format-4 checkpoint (model.safetensors, as DDP and FSDP runs wrote before) still
    resumes under --fsdp, whose next checkpoint is sharded."""
    save_dir = tmp_path / "run"
    _finish(_train(tmp_path, save_dir, 2, 2))
    assert json.loads((save_dir / "step-00000010" / "state.json").read_text())["format"] == 4
    out = _finish(_train(tmp_path, save_dir, 2, 2, "--fsdp", "--steps", "12", "--resume",
                         "auto"))
    assert "resumed from" in out
    state = json.loads((save_dir / "step-00000012" / "state.json").read_text())
    assert state["format"] == 5 and state["step"] == 12


def test_shards_reload_the_optimizer_exactly_and_export_hooks_in_one_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sharded files without torchrun: the optimizer state comes back only for the
    parameters that had it (a zero-state param would change the next step), and a hook is
    exported from the shards as from model.safetensors; nothing is unpickled."""
    from omnilatent.checkpoint.files import begin_checkpoint, save_checkpoint
    from omnilatent.checkpoint.sharded import load_shards, save_shards
    from omnilatent.model.hooks import LatentNeuralHook
    from omnilatent.training.hook_training import export_hooks
    from tests.conftest import TINY

    def build() -> tuple[OmniLatentModel, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = OmniLatentModel(OmniLatentConfig(**TINY))
        model.register_hook(LatentNeuralHook("style", 2, TINY["hidden_dim"], [0]))
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

    model, optimizer = build()
    model.hooks["style"].tokens.data.add_(1.0)
    for p in list(model.parameters())[:3]:  # the other parameters have no optimizer state
        p.grad = torch.ones_like(p)
    optimizer.step()
    tmp = begin_checkpoint(tmp_path, 1)
    saved = save_shards(tmp, model, optimizer)
    ckpt = save_checkpoint(tmp_path, 1, None, {"optimizer": saved}, {
        "hooks": [model.hooks["style"].settings()]}, tmp=tmp)
    other, other_optimizer = build()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a sharded checkpoint must load without unpickling")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    load_shards(ckpt, other, other_optimizer, saved)
    pairs = zip(model.parameters(), other.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    before, after = optimizer.state_dict()["state"], other_optimizer.state_dict()["state"]
    assert before.keys() == after.keys() and len(before) == 3
    assert all(torch.equal(before[k][n], after[k][n]) for k in before for n in before[k])
    (hook_dir,) = export_hooks(ckpt, ["style"], tmp_path)
    exported = LatentNeuralHook.load(hook_dir).state_dict()
    assert all(torch.equal(v, model.hooks["style"].state_dict()[k]) for k, v in exported.items())


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


def _all_reduces_per_run(rank: int, init_file: str, out: str) -> None:
    """Rank ``rank`` of 2 (gloo): 2 steps of 2 micro-batches, once as the trainer runs them
    and once with every micro-batch synchronised; rank 0 writes the number of gradient
    all-reduces (DDP comm hook calls) of each run and whether their weights agree."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    from omnilatent.training import SyntheticMultimodalDataset
    from omnilatent.training import trainer as trainer_module
    from omnilatent.training.distributed import DistributedContext, rank_loader
    from omnilatent.training.rng import seed_everything
    from tests.conftest import TINY

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    context = DistributedContext(rank, 2)
    counts, weights = [], []
    for always_sync in (False, True):
        if always_sync:
            trainer_module.grad_sync = lambda module, context, sync: contextlib.nullcontext()
        seed_everything(0)
        config = OmniLatentConfig(**TINY)
        dataset = SyntheticMultimodalDataset(config, length=16, seed=0, text_len=6)
        trainer = Trainer(OmniLatentModel(config),
                          TrainConfig(steps=2, grad_accum=2, lr=1e-3, device="cpu",
                                      log_interval=1),
                          rank_loader(dataset, 1, context), distributed=context)
        calls = []

        def counting(state, bucket, calls=calls):
            calls.append(1)
            return default_hooks.allreduce_hook(state, bucket)

        trainer.wrapped.register_comm_hook(None, counting)
        trainer.train()
        counts.append(len(calls))
        weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    if rank == 0:
        same = all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])
        Path(out).write_text(json.dumps({"counts": counts, "same": same}))
    # Leave together, with no DDP reducer alive: a rank that tears gloo down while its peer
    # still holds pairs open was seen to abort ("terminate called without an active
    # exception") on a loaded CI machine.
    del trainer
    dist.barrier()
    dist.destroy_process_group()


def test_ddp_all_reduces_gradients_once_per_step_with_accumulation(tmp_path: Path) -> None:
    """Issue 10: with --grad-accum K, DDP skips the gradient all-reduce of the first K - 1
    micro-batches (`grad_sync`): half the all-reduces of syncing every micro-batch at K = 2,
    and the same weights."""
    out = tmp_path / "counts.json"
    torch.multiprocessing.spawn(_all_reduces_per_run, args=(str(tmp_path / "init"), str(out)),
                                nprocs=2)
    result = json.loads(out.read_text())
    once, every = result["counts"]
    assert once > 0 and every == 2 * once, result
    assert result["same"]


def _host_collectives_per_run(rank: int, init_file: str, out: str) -> None:
    """Rank ``rank`` of 2 (gloo): 20 steps of all 16 tasks, a record every 10, once as the
    trainer runs them and once agreeing on a stop every step (so nothing is drawn ahead);
    rank 0 writes each run's all-reduces, by caller and by when they were waited for, its
    losses and whether the weights of the two runs are equal."""
    import torch.distributed as dist

    from omnilatent.training import SyntheticMultimodalDataset
    from omnilatent.training import trainer as trainer_module
    from omnilatent.training.distributed import DistributedContext, rank_loader
    from omnilatent.training.rng import seed_everything
    from tests.conftest import TINY

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    context = DistributedContext(rank, 2)
    real = dist.all_reduce
    runs = []
    for stop_check_every in (trainer_module.STOP_CHECK_EVERY, 1):
        trainer_module.STOP_CHECK_EVERY = stop_check_every
        seed_everything(0)
        config = OmniLatentConfig(**TINY)
        dataset = SyntheticMultimodalDataset(config, length=64, seed=0, text_len=6)
        trainer = Trainer(OmniLatentModel(config),
                          TrainConfig(steps=20, lr=1e-3, device="cpu", log_interval=10),
                          rank_loader(dataset, 1, context), distributed=context)
        calls: list[str] = []

        def counting(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False, calls=calls,
                     trainer=trainer):
            caller = sys._getframe(1).f_code.co_name
            work = real(tensor, op=op, group=group, async_op=async_op)
            if not async_op:
                calls.append(f"{caller}: waited at once")
                return work
            launched = trainer.step

            class Counted:
                def wait(self) -> None:
                    when = "at once" if trainer.step == launched else "a step later"
                    calls.append(f"{caller}: waited {when}")
                    work.wait()

            return Counted()

        dist.all_reduce = counting
        result = trainer.train()
        dist.all_reduce = real
        runs.append({"calls": calls, "losses": [h["loss"] for h in result.history],
                     "weights": {k: v.clone() for k, v in trainer.model.state_dict().items()}})
    if rank == 0:
        same = all(torch.equal(runs[0]["weights"][k], runs[1]["weights"][k])
                   for k in runs[0]["weights"])
        Path(out).write_text(json.dumps({"calls": [run["calls"] for run in runs],
                                         "losses": [run["losses"] for run in runs],
                                         "same": same}))
    del trainer
    dist.barrier()
    dist.destroy_process_group()


def test_steps_make_no_blocking_host_collective_between_records(tmp_path: Path) -> None:
    """Issue 19, §4: per step, the ranks send their batches' modalities a step ahead and wait
    for them a step later; counts are summed once per record and a stop agreed every
    STOP_CHECK_EVERY (10) steps. 20 steps, records at 10 and 20: the host all-reduces waited
    for at once are the first step's and the one after each record's modalities (2), the
    counts (2) and the stop check at step 10 (1), not 3 a step (60) as before; the loss
    all-reduce (device, read at records) stays one a step. Same losses and weights as
    agreeing on everything every step."""
    out = tmp_path / "calls.json"
    torch.multiprocessing.spawn(_host_collectives_per_run,
                                args=(str(tmp_path / "init"), str(out)), nprocs=2)
    result = json.loads(out.read_text())
    ahead, every_step = (collections.Counter(calls) for calls in result["calls"])
    assert ahead == {"__init__: waited a step later": 18, "__init__: waited at once": 2,
                     "all_reduce: waited at once": 3, "mean_over_ranks: waited at once": 20}
    assert every_step == {"__init__: waited at once": 20, "all_reduce: waited at once": 21,
                          "mean_over_ranks: waited at once": 20}
    assert result["losses"][0] == result["losses"][1] and len(result["losses"][0]) == 20
    assert result["same"]


def _stop_on_one_rank(rank: int, init_file: str, save_dir: str) -> None:
    """Rank ``rank`` of 2 (gloo): a stop asked on rank 1 alone after step 3 of 30."""
    import torch.distributed as dist

    from omnilatent.training import SyntheticMultimodalDataset
    from omnilatent.training.distributed import DistributedContext, rank_loader
    from omnilatent.training.rng import seed_everything
    from tests.conftest import TINY

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    context = DistributedContext(rank, 2)
    seed_everything(0)
    config = OmniLatentConfig(**TINY)
    dataset = SyntheticMultimodalDataset(config, length=64, seed=0, text_len=6)
    trainer = Trainer(OmniLatentModel(config),
                      TrainConfig(steps=30, lr=1e-3, device="cpu", log_interval=4,
                                  save_dir=Path(save_dir)),
                      rank_loader(dataset, 1, context), distributed=context)
    result = trainer.train(should_stop=lambda t=trainer: rank == 1 and t.step >= 3)
    assert result.interrupted and result.step == 10, result
    del trainer
    dist.barrier()
    dist.destroy_process_group()


def test_a_stop_on_one_rank_stops_every_rank_at_the_next_check_with_a_checkpoint(
        tmp_path: Path) -> None:
    """Issue 19, §4: a stop asked after step 3 on one rank is agreed at step 10 (the stop is
    checked every STOP_CHECK_EVERY steps); both ranks stop there and the checkpoint holds
    each rank's position after exactly 10 batches (none drawn ahead)."""
    torch.multiprocessing.spawn(_stop_on_one_rank,
                                args=(str(tmp_path / "init"), str(tmp_path / "run")), nprocs=2)
    assert sorted(p.name for p in (tmp_path / "run").glob("step-*")) == ["step-00000010"]
    state = load_checkpoint(tmp_path / "run" / "step-00000010").state
    assert [r["batches_seen"] for r in state["distributed"]["ranks"]] == [10, 10]
