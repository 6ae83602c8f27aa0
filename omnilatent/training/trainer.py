"""The training loop: AdamW, warmup + cosine, clipping, accumulation, AMP, exact resume.

Exact resume rests on four things being restored together from a checkpoint: the weights and
optimizer/scheduler/scaler state, every RNG (including the generator that picks each step's
task), the data position (the loader's own state, or a count of batches to skip), and the
window the next metrics record averages over. On CPU with 0 loader workers a resumed run is
then bit-identical to an uninterrupted one, and so are its metrics.jsonl records except the
wall-clock fields (`omnilatent.training.run_log.WALL_CLOCK_FIELDS`).

A run holds its save dir's lock (`pipeline.lock.FolderLock`) from its first touch (resume or
train) to its end, so a second run into the same folder stops at once instead of mixing its
checkpoints and metrics with the first one's.

Under torchrun (see `omnilatent.training.distributed`) every rank runs this loop in step: the
task is chosen from the modalities all ranks hold, losses and counts are reduced over ranks,
and rank 0 alone logs, holds the lock and writes checkpoints, which also keep every rank's data
position and RNG states; a resume with another number of processes is refused.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from omnilatent.config import OmniLatentConfig
from omnilatent.errors import CheckpointError, ConfigError, OmniLatentError
from omnilatent.inference.card import CheckpointCard
from omnilatent.model import OmniLatentModel
from omnilatent.training.checkpoint import (
    STATE_FILE,
    TRAINING_FILE,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    step_dir_name,
)
from omnilatent.training.compile import compile_blocks
from omnilatent.training.config import TrainConfig, as_train_config
from omnilatent.training.distributed import (
    SINGLE,
    DistributedContext,
    all_reduce,
    any_rank,
    barrier,
    common_present,
    full_state,
    gather_to_main,
    grad_sync,
    load_full_state,
    mean_over_ranks,
    wrap_model,
)
from omnilatent.training.json_values import is_count
from omnilatent.training.rng import capture_rng, check_rng_state, restore_rng
from omnilatent.training.run_log import (
    DATA_COUNTERS,
    DROPPED_WARNING,
    LogWindow,
    dropped_share,
    loader_counters,
)
from omnilatent.training.state_check import check_trainer_state
from omnilatent.training.tasks import PairSampler, Task, common_modalities, content_tokens
from pipeline.errors import PipelineError
from pipeline.lock import FolderLock
from pipeline.normalize import to_device_units

METRICS_FILE = "metrics.jsonl"
MAX_SKIPPED_IN_A_ROW = 1000  # steps no task could use, before the run is called stuck


class TrainerCallbacks:
    """Hooks for a front end (the CLI draws progress with them). All methods are optional."""

    def on_start(self, trainer: Trainer) -> None: ...

    def on_step(self, step: int, total: int, task: str) -> None:
        """After each optimizer step. Its loss is not known yet: losses stay on the device
        and are read at log intervals (`on_log`'s record holds their window mean)."""

    def on_log(self, record: dict[str, Any]) -> None: ...

    def on_checkpoint(self, path: Path) -> None: ...

    def on_eval(self, record: dict[str, Any]) -> None: ...

    def on_event(self, message: str) -> None: ...


@dataclass
class TrainResult:
    step: int
    interrupted: bool
    last_checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per step
    last_record: dict[str, Any] | None = None
    last_eval: dict[str, Any] | None = None  # the latest {"step", "eval"} record
    data: dict[str, int] | None = None  # the loader's counters (DATA_COUNTERS), if it has any


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA GPU is available; "
                          "use --device cpu or auto")
    return torch.device(name)


def amp_dtype_for(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16 (with a GradScaler); no AMP on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases, gates)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2))


class Trainer:
    """Trains an OmniLatentModel on batches from ``dataloader``.

    The loader yields ``dict[str, Tensor]`` batches (text ``(B, L)``, audio ``(B, M, T)``,
    image ``(B, 3, H, W)``, video ``(B, 3, T, H, W)``), float32 in model units or in the shard
    loader's stored dtypes (`pipeline.normalize.to_model_units`). If it has ``state_dict`` /
    ``load_state_dict`` (`build_dataloader`, the shard and video loaders) its position is
    checkpointed and a resume continues with the next batch. A plain
    ``torch.utils.data.DataLoader`` has neither: a resume then draws and drops as many batches
    as were consumed, which are the same samples only if the loader's order is (no shuffle);
    with ``shuffle=True`` the data order after a resume is not the uninterrupted run's
    (``resume`` warns).

    ``config`` is a TrainConfig, or (the seed's API) the model's own OmniLatentConfig, whose
    training defaults become one (`TrainConfig.from_model_config`).

    ``card`` goes into every checkpoint so that it can be used without the training command
    (see `omnilatent.inference.card`). ``evaluator`` measures the model on held-out data
    (``config.eval_every``); its metrics are appended to metrics.jsonl as
    ``{"step", "eval"}`` records. It runs between RNG snapshots, so it never changes the run.
    ``data_source`` names the kind of data (e.g. "shards"); it is checkpointed, and a resume
    on another kind is refused (its loader position would mean nothing there).
    ``distributed`` is this process's place in a torchrun job (default: a single process);
    the model is wrapped in DDP, or sharded by FSDP2, accordingly.
    """

    # Where the run started when not from a fresh model alone (`--from`, new hooks; see
    # `omnilatent.training.hook_training.run_origin`); every checkpoint records it.
    origin: dict[str, Any] | None = None

    def __init__(
        self,
        model: OmniLatentModel,
        config: TrainConfig | OmniLatentConfig,
        dataloader: Any,
        callbacks: TrainerCallbacks | None = None,
        card: CheckpointCard | None = None,
        evaluator: Callable[[OmniLatentModel], dict[str, Any]] | None = None,
        data_source: str | None = None,
        distributed: DistributedContext = SINGLE,
    ) -> None:
        if isinstance(config, OmniLatentConfig) and config != model.config:
            diffs = [f"{k} {v!r} vs the model's {getattr(model.config, k)!r}"
                     for k, v in config.to_dict().items() if getattr(model.config, k) != v]
            raise ConfigError("the OmniLatentConfig given to Trainer describes another model ("
                              + "; ".join(diffs[:3]) + "); pass the model's own config, or a "
                              "TrainConfig")
        config = as_train_config(config)
        self.config = config
        self.dist = distributed
        if distributed.fsdp and evaluator is not None:
            raise ConfigError("evaluation during training is not supported with --fsdp (the "
                              "held-out shards are split by rank); pass --eval-every 0 and "
                              "evaluate the checkpoints with `omni eval`")
        self.card = card
        self.data_source = data_source
        self.evaluator = evaluator
        self.callbacks = callbacks or TrainerCallbacks()
        self.device = resolve_device(config.device)
        if distributed.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", distributed.local_rank)
        self.model = model.to(self.device)
        self.wrapped = wrap_model(self.model, distributed, self.device)  # before the optimizer
        self.model_config: OmniLatentConfig = model.config
        self.dataloader = dataloader
        self.amp_dtype = amp_dtype_for(self.device, config.amp)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, config.effective_warmup, config.steps, config.min_lr_ratio),
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        if config.compile:  # each block on its own: all 16 tasks share its graphs
            compile_blocks(self.model)
        self.forward_model: Callable[..., dict] = self.wrapped
        self.pair_sampler = PairSampler(config.seed)
        self.step = 0
        self.batches_seen = 0
        self._skip_batches = 0
        self._iterator: Iterator | None = None
        self.window = LogWindow(deque(maxlen=config.log_interval))
        self._pending: list[tuple[int, str, Tensor]] = []  # (step, task, loss) not yet read
        # counters of earlier runs (from the checkpoint), and the loader's when it resumed
        self._data_before = dict.fromkeys(DATA_COUNTERS, 0)
        self._data_mark = dict.fromkeys(DATA_COUNTERS, 0)
        self._warned_dropped = False
        self._lock = (None if config.save_dir is None or not distributed.is_main
                      else FolderLock(config.save_dir))

    # ------------------------------------------------------------- overridable
    def select_task(self, present: set[str]) -> Task | None:
        """The task for this step, or None to skip it, given the modalities that every batch
        of the step holds. Default: every pair in turn."""
        return self.pair_sampler.choose(present)

    def extra_state(self) -> dict[str, Any]:
        """Subclasses add their own resumable state (e.g. the curriculum phase)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Counterpart of ``extra_state`` (given a state that passed ``check_extra_state``)."""

    def check_extra_state(self, state: dict[str, Any]) -> None:
        """Raise CheckpointError (the reason, without the path) if ``load_extra_state`` could
        not restore ``state``; it is an object, possibly empty (a run of another kind)."""

    def check_compatible(self, path: Path, state: dict[str, Any]) -> None:
        """Raise CheckpointError if this run cannot continue the run that wrote ``state``
        (which passed ``check_state``): another number of processes (each rank's data
        position belongs to one rank of the saved run), another kind of data (checked first:
        the sizes of the model follow from the data) or another model."""
        saved_world = state.get("distributed", {}).get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise CheckpointError(
                f"{path} was written by a run of {saved_world} process(es) but this run has "
                f"{self.dist.world_size}: each process's data position and random state belong "
                f"to one process of that run; resume with {saved_world} process(es) in all "
                "(torchrun --nnodes x --nproc_per_node), or start a new run in another save dir"
            )
        saved = state["data"].get("source")
        if saved is not None and self.data_source is not None and saved != self.data_source:
            raise CheckpointError(
                f"{path} was trained on {saved} data but this run reads {self.data_source} "
                f"data; resume with the data source it was trained on, or start a new run in "
                "another save dir"
            )
        saved_cfg = OmniLatentConfig.from_dict(state["model_config"])
        diffs = [f"{k}: checkpoint {v!r} vs now {getattr(self.model_config, k)!r}"
                 for k, v in saved_cfg.to_dict().items()
                 if getattr(self.model_config, k) != v and k != "gradient_checkpointing"]
        if diffs:
            raise CheckpointError(f"{path} was trained with a different model: "
                                  + "; ".join(diffs))

    def log_fields(self) -> dict[str, Any]:
        """Extra fields for each metrics record."""
        return {}

    # ------------------------------------------------------------- data
    def _next_batch(self) -> dict:
        for _attempt in range(2):
            if self._iterator is None:
                self._iterator = iter(self.dataloader)
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                continue
            self.batches_seen += 1
            return batch
        raise OmniLatentError("the data loader yielded no batches; check the data source")

    def _fast_forward(self) -> None:
        while self._skip_batches > 0:
            self._next_batch()
            self._skip_batches -= 1

    # ------------------------------------------------------------- checkpoints
    def _metrics_path(self) -> Path | None:
        return None if self.config.save_dir is None else self.config.save_dir / METRICS_FILE

    def claim_save_dir(self) -> None:
        """Take the save dir's lock (if there is a save dir; a no-op when held already):
        FolderInUseError, naming the holder's pid, when another run holds it."""
        if self._lock is not None:
            self._lock.acquire()

    def release_save_dir(self) -> None:
        """Give the save dir's lock up (``train`` does when it ends, also on an error)."""
        if self._lock is not None:
            self._lock.release()

    def data_counters(self) -> dict[str, int] | None:
        """The loader's counters over the whole run, checkpointed runs before included."""
        mine = self._local_counters()
        if mine is None or not self.dist.enabled:
            return mine
        totals = all_reduce([mine[k] for k in DATA_COUNTERS], torch.distributed.ReduceOp.SUM,
                            self.dist)
        return {k: int(v) for k, v in zip(DATA_COUNTERS, totals, strict=True)}

    def _local_counters(self) -> dict[str, int] | None:
        """This rank's share of ``data_counters``."""
        now = loader_counters(self.dataloader)
        if now is None:
            return None
        return {k: self._data_before[k] + now[k] - self._data_mark[k] for k in DATA_COUNTERS}

    def save(self) -> Path:
        """Checkpoint the current step into ``save_dir`` and prune old checkpoints. Under
        torchrun every rank calls it: rank 0 writes, with every rank's data position and RNG
        states, and all ranks wait until the checkpoint is complete."""
        if self.config.save_dir is None:
            raise ConfigError("cannot save a checkpoint: TrainConfig.save_dir is not set")
        loader_state = (self.dataloader.state_dict()
                        if hasattr(self.dataloader, "state_dict") else None)
        counters = self.data_counters()
        ranks = gather_to_main(self.dist, {
            "rng": capture_rng(), "loader": loader_state, "batches_seen": self.batches_seen,
            "counters": self._local_counters()})
        weights, optimizer_state = full_state(self.dist, self.model, self.optimizer)
        path = self.config.save_dir / step_dir_name(self.step)
        if ranks is not None:
            path = self._write(self.config.save_dir, weights, optimizer_state, loader_state,
                               counters, ranks)
        barrier(self.dist)
        return path

    def _write(self, save_dir: Path, weights: dict[str, Tensor],
               optimizer_state: dict[str, Any], loader_state: dict | None,
               counters: dict[str, int] | None, ranks: list[dict[str, Any]]) -> Path:
        distributed: dict[str, Any] = {"world_size": self.dist.world_size}
        if self.dist.enabled:
            distributed["ranks"] = ranks
        state = {
            "model_config": self.model_config.to_dict(),
            "train_config": self.config.to_dict(),
            "hooks": [hook.settings() for hook in self.model.hooks.values()],
            "rng": capture_rng(),
            "pair_sampler": self.pair_sampler.state_dict(),
            "data": {"batches_seen": self.batches_seen, "loader": loader_state,
                     "source": self.data_source, "counters": counters},
            "distributed": distributed,
            "log_window": self.window.state_dict(),
            "extra": self.extra_state(),
            "card": None if self.card is None else self.card.to_state(),
            "origin": self.origin,
        }
        training_state = {
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        path = save_checkpoint(save_dir, self.step, weights, training_state, state,
                               None if self.card is None else self.card.files())
        prune_checkpoints(save_dir, self.config.keep_last, keep=path,
                          check=self.check_state)
        self.callbacks.on_checkpoint(path)
        return path

    def check_state(self, path: Path, state: dict[str, Any]) -> None:
        """Raise CheckpointError with the reason if this trainer could not restore the
        checkpoint at ``path`` whose verified state.json is ``state`` (see
        `check_trainer_state`, ``check_extra_state``). The ``check`` of
        find_latest_checkpoint and prune_checkpoints; resume runs it before changing
        anything."""
        try:
            check_trainer_state(state)
            self._check_distributed_state(state.get("distributed", {"world_size": 1}))
            self.check_extra_state(state["extra"])
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {STATE_FILE} {exc}") from None
        if state["card"] is not None:
            CheckpointCard.from_state(state["card"], path)

    @staticmethod
    def _check_distributed_state(state: Any) -> None:
        """``state["distributed"]``: the world size, and each rank's position when over 1."""
        if not (isinstance(state, dict) and is_count(state.get("world_size"))
                and state["world_size"] >= 1):
            raise CheckpointError("'distributed' must be {world_size: an integer >= 1, ranks}")
        if state["world_size"] == 1:
            return
        ranks = state.get("ranks")
        if not (isinstance(ranks, list) and len(ranks) == state["world_size"]
                and all(isinstance(r, dict) and is_count(r.get("batches_seen"))
                        and (r.get("loader") is None or isinstance(r["loader"], dict))
                        and (r.get("counters") is None or (
                            isinstance(r["counters"], dict)
                            and set(r["counters"]) == set(DATA_COUNTERS)
                            and all(is_count(v) for v in r["counters"].values())))
                        and "rng" in r for r in ranks)):
            raise CheckpointError("'distributed.ranks' must hold one {rng, loader, "
                                  "batches_seen, counters} per process")
        for rank in ranks:
            check_rng_state(rank["rng"])

    def _check_weights(self, path: Path, weights: dict[str, Tensor]) -> None:
        """Refuse weights that load_state_dict would fail on half-way (it copies what fits
        before it raises)."""
        own = self.model.state_dict()
        problems = sorted(
            [f"missing {k}" for k in own.keys() - weights.keys()]
            + [f"unexpected {k}" for k in weights.keys() - own.keys()]
            + [f"{k} has shape {tuple(weights[k].shape)}, the model {tuple(own[k].shape)}"
               for k in own.keys() & weights.keys() if weights[k].shape != own[k].shape])
        if problems:
            raise CheckpointError(f"{path}: weights do not fit the model (registered hooks "
                                  f"differ?): " + "; ".join(problems[:5])
                                  + (f" and {len(problems) - 5} more" if len(problems) > 5
                                     else ""))

    def resume(self, path: Path) -> None:
        """Restore weights, optimizer, scheduler, scaler, RNGs, data position and the log
        window from the checkpoint folder ``path``.

        The checkpoint is verified, loaded and checked (``check_state``,
        ``check_compatible``, the weights' names and shapes) before anything changes, so a
        bad one is a CheckpointError that leaves the trainer and the save dir's metrics as
        they were. Takes the save dir's lock, kept for ``train`` (released if this fails).
        """
        path = Path(path)
        held = self._lock is not None and self._lock.held
        self.claim_save_dir()
        try:
            self._resume(path)
        except BaseException:
            if not held:
                self.release_save_dir()
            raise

    def _resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        self.check_state(path, ckpt.state)
        self.check_compatible(path, ckpt.state)
        self._check_weights(path, ckpt.model_state)
        training = ckpt.training_state
        if not (isinstance(training, dict)
                and all(isinstance(training.get(k), dict)
                        for k in ("optimizer", "scheduler", "scaler"))):
            raise CheckpointError(f"{path}: {TRAINING_FILE} must hold the optimizer, scheduler "
                                  "and scaler states")
        data = dict(ckpt.state["data"])
        rng = ckpt.state["rng"]
        if self.dist.enabled:  # this rank's own position and generators
            mine = ckpt.state["distributed"]["ranks"][self.dist.rank]
            rng = mine["rng"]
            data.update(loader=mine["loader"], batches_seen=mine["batches_seen"],
                        counters=mine["counters"])
        if data["loader"] is not None and hasattr(self.dataloader, "load_state_dict"):
            try:  # first: loaders check a position before they take it
                self.dataloader.load_state_dict(data["loader"])
            except (OmniLatentError, PipelineError, KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"{path}: the data loader cannot continue from the "
                                      f"saved position ({exc})") from exc
            self.batches_seen = data["batches_seen"]
        else:
            self.batches_seen, self._skip_batches = 0, data["batches_seen"]
            if self._skip_batches and not hasattr(self.dataloader, "state_dict"):
                warnings.warn(
                    f"the data loader ({type(self.dataloader).__name__}) keeps no position "
                    f"(no state_dict): resuming draws and drops the {self._skip_batches} "
                    "batches already consumed, which are the same samples only if its order "
                    "is fixed (no shuffle); for an exact resume use "
                    "omnilatent.training.build_dataloader", stacklevel=3)
        try:
            load_full_state(self.dist, self.model, self.optimizer, ckpt.model_state,
                            training["optimizer"])
            self.scheduler.load_state_dict(training["scheduler"])
            self.scaler.load_state_dict(training["scaler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: {TRAINING_FILE} does not fit this run's optimizer "
                                  f"({type(exc).__name__}: {exc})") from exc
        restore_rng(rng)
        self.pair_sampler.load_state_dict(ckpt.state["pair_sampler"])
        self.step = ckpt.state["step"]
        self.load_extra_state(ckpt.state["extra"])
        if "log_window" in ckpt.state:
            self.window.load_state_dict(ckpt.state["log_window"])
        if data.get("counters") is not None:
            self._data_before = dict(data["counters"])
            self._data_mark = loader_counters(self.dataloader) or self._data_mark
        known = {item.name for item in fields(TrainConfig)} - {"save_dir", "device"}
        changed = [f"{k} {v!r} -> {getattr(self.config, k)!r}"
                   for k, v in ckpt.state["train_config"].items()
                   if k in known and getattr(self.config, k) != v]
        if changed:
            self.callbacks.on_event("resuming with changed settings: " + ", ".join(changed)
                                    + self._schedule_note(ckpt.state["train_config"]))
        self._truncate_metrics()
        self.callbacks.on_event(f"resumed from {path} at step {self.step}")

    def _schedule_note(self, saved: dict[str, Any]) -> str:
        """What changed settings do to the learning-rate schedule (warmup, then cosine decay
        to ``steps``), which is recomputed from them as nanoGPT does with a changed
        ``max_iters``: the lr at the resumed step, before and now; and, for a curriculum,
        that its phases are shares of the new ``steps``. Empty when the schedule is the same."""
        keys = ("steps", "lr", "warmup_steps", "min_lr_ratio")
        if all(saved.get(key, getattr(self.config, key)) == getattr(self.config, key)
               for key in keys):
            return ""
        before = replace(self.config, **{key: saved[key] for key in keys if key in saved})

        def lr(config: TrainConfig) -> float:
            return config.lr * lr_factor(self.step, config.effective_warmup, config.steps,
                                         config.min_lr_ratio)

        note = (f"; the learning-rate schedule is recomputed over {self.config.steps} steps: "
                f"lr at step {self.step} {lr(before):.2e} -> {lr(self.config):.2e}")
        if hasattr(self, "spans") and before.steps != self.config.steps:
            note += "; the curriculum's phases are shares of the new total"
        return note

    def _truncate_metrics(self) -> None:
        """Drop records a killed run wrote after its last checkpoint, so logs stay exact."""
        path = self._metrics_path()
        if path is None or not path.exists() or not self.dist.is_main:
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= self.step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a half-written last line from a kill
        path.write_text("".join(line + "\n" for line in kept))

    # ------------------------------------------------------------- evaluation
    def _eval_due(self, saving: bool) -> bool:
        every = self.config.eval_every
        if self.evaluator is None or every == 0:
            return False
        if every is None:
            return saving
        return self.step % every == 0 or self.step == self.config.steps

    def run_eval(self) -> dict[str, Any]:
        """Evaluate now and log ``{"step", "eval"}``; RNG states are restored afterwards."""
        if self.evaluator is None:
            raise ConfigError("this trainer has no evaluator")
        rng = capture_rng()
        try:
            metrics = self.evaluator(self.model)
        finally:
            restore_rng(rng)
        record = {"step": self.step, "eval": metrics}
        path = self._metrics_path()
        if path is not None and self.dist.is_main:
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        self.callbacks.on_eval(record)
        return record

    # ------------------------------------------------------------- training
    def _train_step(self) -> tuple[Task, Tensor, int, int] | None:
        """One optimizer step over ``grad_accum`` batches: (task, loss, samples, tokens), or
        None when no task can use them. The loss is a 0-dim float64 tensor on the device,
        the mean over ranks, not read here: reading waits for the device to finish the step,
        so `_read_losses` reads the pending steps' losses together at log intervals.

        The step's batches are drawn first and its task is chosen from the modalities all of
        them hold, so every micro-batch serves the task (a task chosen from the first batch
        alone fails on a later one without, e.g., transcript text). The cost: the step's
        batches are in host memory together.
        """
        cfg = self.config
        mcfg = self.model_config
        self.model.train()
        samples, tokens = 0, 0
        # Summed on the device; read at log intervals (`_read_losses`): each read waits for
        # the GPU to finish.
        step_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else nullcontext())
        batches = [self._next_batch() for _ in range(cfg.grad_accum)]
        task = self.select_task(common_present(self.dist, common_modalities(batches)))
        if task is None:
            return None
        for index, batch in enumerate(batches):
            source, _ = task.inputs(batch)  # host views
            samples += source.shape[0]
            tokens += content_tokens(task.source, source, mcfg.audio_stride, mcfg.patch_size,
                                     mcfg.tubelet_size)  # counted before the copy: no sync
            # Only the task's modalities travel, whole (a slice of a pinned tensor would be
            # copied through pageable memory), in their stored dtypes; cut on the device.
            source, target = task.inputs({m: to_device_units(m, batch[m], self.device)
                                          for m in {task.source, task.target}})
            # DDP all-reduces gradients on the last micro-batch only
            with grad_sync(self.wrapped, self.dist, index == len(batches) - 1):
                with autocast:
                    out = self.forward_model(task.source, source, task.target, target=target)
                loss = out["loss"] / cfg.grad_accum
                self.scaler.scale(loss).backward()
            step_loss += loss.detach()
        if self.dist.enabled:  # the step's loss is the mean over ranks; counts are totals
            step_loss = mean_over_ranks(step_loss, self.dist)
            samples_f, tokens_f = all_reduce([samples, tokens], torch.distributed.ReduceOp.SUM,
                                             self.dist)
            samples, tokens = int(samples_f), int(tokens_f)
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return task, step_loss, samples, tokens

    def _read_losses(self, result: TrainResult) -> None:
        """Read the losses of the steps since the last read, in one transfer, into the log
        window, ``result.history`` and the callbacks; raise on the first that is not finite.

        Called before every metrics record and checkpoint, so a record averages read losses
        and no checkpoint is written after a non-finite loss (the steps after it are lost
        with the run, which stops here anyway).
        """
        if not self._pending:
            return
        values = torch.stack([loss for _, _, loss in self._pending]).tolist()
        pending, self._pending = self._pending, []
        for (step, task, _), loss in zip(pending, values, strict=True):
            if not math.isfinite(loss):
                raise OmniLatentError(
                    f"loss became {loss} at step {step} (task {task}); lower --lr or enable "
                    "gradient clipping")
            self.window.recent.append((task, loss))
            result.history.append({"step": step, "task": task, "loss": loss})

    def train(self, should_stop: Callable[[], bool] | None = None) -> TrainResult:
        """Run until ``config.steps`` (or until ``should_stop()`` turns true after a step, in
        which case a checkpoint is written when ``save_dir`` is set). Holds the save dir's
        lock until it returns or raises."""
        self.claim_save_dir()
        try:
            return self._train(should_stop)
        finally:
            self.release_save_dir()

    def _log(self, lr: float) -> dict[str, Any]:
        """The metrics record of the current step (see `LogWindow`)."""
        window = self.window
        elapsed = max(window.elapsed(), 1e-9)
        per_task: dict[str, list[float]] = defaultdict(list)
        for name, value in window.recent:
            per_task[name].append(value)
        record = {
            "step": self.step,
            "loss": sum(value for _, value in window.recent) / len(window.recent),
            "losses": {k: sum(v) / len(v) for k, v in sorted(per_task.items())},
            "lr": lr,
            "tokens_per_s": window.tokens / elapsed,
            "samples_per_s": window.samples / elapsed,
            "skipped_batches": window.skipped,
            **self.log_fields(),
        }
        counters = self.data_counters()
        if counters is not None:
            record["data"] = counters
            share = dropped_share(counters)
            if share > DROPPED_WARNING and not self._warned_dropped:
                self._warned_dropped = True
                stats = getattr(self.dataloader, "stats", None)
                reasons = list(getattr(stats, "errors", []))[-1:]
                self.callbacks.on_event(
                    f"the loader dropped {counters['dropped']} of "
                    f"{counters['samples'] + counters['dropped']} samples ({share:.1%}), more "
                    f"than {DROPPED_WARNING:.0%}; check the data with `omni inspect`"
                    + (f" (last reason: {reasons[0]})" if reasons else ""))
        window.restart()
        return record

    def _train(self, should_stop: Callable[[], bool] | None) -> TrainResult:
        cfg = self.config
        metrics_path = self._metrics_path()
        if metrics_path is not None:
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            if self.step == 0 and self.dist.is_main:
                metrics_path.write_text("")
        self.callbacks.on_start(self)
        self._fast_forward()
        result = TrainResult(step=self.step, interrupted=False, last_checkpoint=None)
        # Losses are averaged over the last log_interval steps (a sliding window), so with the
        # balanced task cycle every record mixes the target modalities in the same proportion.
        window = self.window
        window.started = time.perf_counter()
        in_a_row = 0
        while self.step < cfg.steps:
            lr = self.optimizer.param_groups[0]["lr"]
            outcome = self._train_step()
            if outcome is None:
                window.skipped += cfg.grad_accum  # the record counts skipped batches
                in_a_row += 1
                if in_a_row >= MAX_SKIPPED_IN_A_ROW:
                    raise OmniLatentError(
                        f"{in_a_row} steps in a row could serve no task of step "
                        f"{self.step + 1} (e.g. a phase of text tasks only, on data without "
                        "transcripts); check the schedule against the data"
                    )
                continue
            in_a_row = 0
            task, loss, samples, tokens = outcome
            self.step += 1
            self._pending.append((self.step, task.name, loss))
            window.samples += samples
            window.tokens += tokens
            self.callbacks.on_step(self.step, cfg.steps, task.name)
            if self.step % cfg.log_interval == 0 or self.step == cfg.steps:
                self._read_losses(result)
                record = self._log(lr)
                if metrics_path is not None and self.dist.is_main:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                self.callbacks.on_log(record)
                result.last_record = record
            stop = any_rank(self.dist, should_stop is not None and should_stop())
            periodic = cfg.save_every > 0 and self.step % cfg.save_every == 0
            saving = cfg.save_dir is not None and (periodic or self.step == cfg.steps or stop)
            # before the checkpoint, so a resume keeps the record; under DDP rank 0 evaluates
            # alone while the others wait (FSDP refuses an evaluator)
            if self._eval_due(saving) and self.dist.is_main:
                result.last_eval = self.run_eval()
            if saving:
                self._read_losses(result)
                result.last_checkpoint = self.save()
            if stop and self.step < cfg.steps:
                result.interrupted = True
                break
        self._read_losses(result)
        result.step = self.step
        result.data = self.data_counters()
        return result
