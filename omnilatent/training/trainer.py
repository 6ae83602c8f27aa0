"""The training loop: AdamW, warmup + cosine, clipping, accumulation, AMP, exact resume.

Exact resume restores every stateful part together (`omnilatent.training.checkpointer`): on
CPU with 0 loader workers a resumed run is then bit-identical to an uninterrupted one, and so
are its metrics.jsonl records except the wall-clock fields (`run_log.WALL_CLOCK_FIELDS`).

A run holds its save dir's lock (`pipeline.lock.FolderLock`) from its first touch (resume or
train) to its end, so a second run into the same folder stops at once instead of mixing in.

Under torchrun (`omnilatent.training.distributed`) every rank runs this loop in step: the task
is chosen from the task pairs all ranks can serve, losses and counts are reduced over ranks, and
rank 0 alone logs, holds the lock and writes checkpoints (with every rank's data position).

No step waits on a host round trip between ranks. Each rank draws the next step's batches
after the current step's backward pass and sends the pairs they serve then (`CommonPresent`),
waiting for the answer a step later; sample and token counts stay per rank and are summed
once per metrics record; a stop request is agreed every `STOP_CHECK_EVERY` steps. No batch is
drawn ahead across a step after which the trainer logs, checks for a stop or may save, so
records and checkpoints see the data position (and loader counters) they saw before, and the
step after such a step waits for its exchange."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from omnilatent.checkpoint.card import CheckpointCard
from omnilatent.config import OmniLatentConfig
from omnilatent.errors import ConfigError, OmniLatentError
from omnilatent.model import OmniLatentModel
from omnilatent.tasks import PairSampler, Task, TaskSampler, common_pairs, content_tokens
from omnilatent.training.checkpointer import Checkpointer
from omnilatent.training.compile import compile_blocks
from omnilatent.training.config import TrainConfig, as_train_config, lr_factor
from omnilatent.training.cursor import DataCursor
from omnilatent.training.distributed import (
    SINGLE,
    CommonPresent,
    DistributedContext,
    all_reduce,
    any_rank,
    grad_sync,
    mean_over_ranks,
    wrap_model,
)
from omnilatent.training.rng import capture_rng, restore_rng
from omnilatent.training.run_log import DROPPED_WARNING, LogWindow, dropped_share
from pipeline.lock import FolderLock
from pipeline.normalize import to_device_units

METRICS_FILE = "metrics.jsonl"
MAX_SKIPPED_IN_A_ROW = 1000  # steps no task could use, before the run is called stuck
# Under torchrun, steps between the ranks' agreements on a stop request (one host all-reduce
# each): Ctrl-C or SIGTERM stops within this many steps, with a checkpoint on every rank.
STOP_CHECK_EVERY = 10


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


class CompositeCallbacks(TrainerCallbacks):
    """Passes every trainer callback on to each of ``parts`` in turn (display, TensorBoard)."""

    def __init__(self, *parts: TrainerCallbacks) -> None:
        self.parts = parts

    def _each(name: str) -> Callable[..., None]:  # noqa: N805 - builds the methods below
        def call(self: CompositeCallbacks, *args: Any) -> None:
            for part in self.parts:
                getattr(part, name)(*args)
        return call

    on_start, on_step, on_log = _each("on_start"), _each("on_step"), _each("on_log")
    on_checkpoint, on_eval, on_event = _each("on_checkpoint"), _each("on_eval"), _each("on_event")
    del _each


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
    loader's stored dtypes (`pipeline.normalize.to_model_units`; its mp4 clips' video is I420
    ``(B, T, 3H/2, W)`` uint8, made RGB there); its position is kept by a
    `DataCursor` (a plain DataLoader's only by a count of batches to skip).
    ``sampler`` chooses each step's task (default: all 16 modality pairs in turn; a
    curriculum is `omnilatent.training.curriculum.CurriculumSampler`).

    ``config`` is a TrainConfig, or (the seed's API) the model's own OmniLatentConfig, whose
    training defaults become one (`TrainConfig.from_model_config`).

    ``card`` goes into every checkpoint so that it can be used without the training command
    (see `omnilatent.checkpoint.card`). ``evaluator`` measures the model on held-out data
    (``config.eval_every``); its metrics are appended to metrics.jsonl as
    ``{"step", "eval"}`` records. It runs between RNG snapshots, so it never changes the run.
    ``data_source`` names the kind of data (e.g. "shards"); it is checkpointed, and a resume
    on another kind is refused (its loader position would mean nothing there).
    ``distributed`` is this process's place in a torchrun job (default: a single process);
    the model is wrapped in DDP, or sharded by FSDP2, accordingly."""

    # Where the run started when not from a fresh model alone (`--from`, new hooks; see
    # `omnilatent.training.hook_training.run_origin`); every checkpoint records it.
    origin: dict[str, Any] | None = None

    def __init__(self, model: OmniLatentModel, config: TrainConfig | OmniLatentConfig,
                 dataloader: Any, callbacks: TrainerCallbacks | None = None,
                 card: CheckpointCard | None = None,
                 evaluator: Callable[[OmniLatentModel], dict[str, Any]] | None = None,
                 data_source: str | None = None, distributed: DistributedContext = SINGLE,
                 sampler: TaskSampler | None = None) -> None:
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
        self.dataloader = dataloader
        self.amp_dtype = amp_dtype_for(self.device, config.amp)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, config.effective_warmup, config.steps, config.min_lr_ratio))
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16)
        if config.compile:  # each block on its own: all 16 tasks share its graphs
            compile_blocks(self.model)
        self.forward_model: Callable[..., dict] = self.wrapped
        self.sampler: TaskSampler = sampler or PairSampler(config.seed)
        self.cursor = DataCursor(dataloader, distributed)
        self.checkpointer = Checkpointer(self)
        self.step = 0
        self.window = LogWindow(deque(maxlen=config.log_interval))
        self._pending: list[tuple[int, str, Tensor]] = []  # (step, task, loss) not yet read
        # under torchrun, the next step's batches and their exchange in flight (drawn ahead)
        self._ahead: tuple[list[dict], CommonPresent] | None = None
        self._warned_dropped = False
        self._lock = (None if config.save_dir is None or not distributed.is_main
                      else FolderLock(config.save_dir))

    def metrics_path(self) -> Path | None:
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

    def save(self) -> Path:
        """Checkpoint the current step (`Checkpointer.save`; under torchrun every rank calls it)."""
        return self.checkpointer.save()

    def resume(self, path: Path) -> None:
        """Restore every part from the checkpoint folder ``path`` (`Checkpointer.restore`:
        all checked before anything changes). Takes the save dir's lock, kept for ``train``
        (released if this fails)."""
        held = self._lock is not None and self._lock.held
        self.claim_save_dir()
        try:
            self.checkpointer.restore(Path(path))
        except BaseException:
            if not held:
                self.release_save_dir()
            raise

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
        path = self.metrics_path()
        if path is not None and self.dist.is_main:
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        self.callbacks.on_eval(record)
        return record

    def _draw(self) -> tuple[list[dict], CommonPresent]:
        """A step's ``grad_accum`` batches, the pairs all of them serve sent to the other ranks."""
        batches = [self.cursor.next_batch() for _ in range(self.config.grad_accum)]
        return batches, CommonPresent(self.dist, common_pairs(batches))

    def _draw_ahead(self, step: int) -> None:
        """Under torchrun, draw the batches of the step after ``step`` now, so their exchange
        runs while this one finishes; not across a step that logs, checks for a stop or may
        save (see the module)."""
        cfg = self.config
        if not self.dist.enabled or step == cfg.steps or step % cfg.log_interval == 0 \
                or step % STOP_CHECK_EVERY == 0 \
                or (cfg.save_every > 0 and step % cfg.save_every == 0):
            return
        self._ahead = self._draw()

    def _train_step(self) -> tuple[Task, Tensor, int, int] | None:
        """One optimizer step over ``grad_accum`` batches: (task, loss, samples, tokens), or
        None when no task can use them. The loss is a 0-dim float64 tensor on the device,
        the mean over ranks, not read here: reading waits for the device to finish the step,
        so `_read_losses` reads the pending steps' losses together at log intervals. The
        counts are this rank's (`_log` sums them over ranks).

        The step's batches are drawn first and its task is chosen from the pairs all of them
        serve, so every micro-batch has rows for the task (a task chosen from the first batch
        alone fails on a later one without, e.g., transcript text). The cost: the step's
        batches are in host memory together."""
        cfg = self.config
        mcfg = self.model.config
        self.model.train()
        samples, tokens = 0, 0
        step_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else nullcontext())
        batches, present = self._ahead or self._draw()
        self._ahead = None
        task = self.sampler.select(self.step, present.result(), self.callbacks.on_event)
        if task is None:
            return None
        # Only the rows holding the task's source and target train (a window without a
        # transcript, or without sound); when some were cut, each micro-batch weighs by its
        # rows, so the step's loss is the mean over the rows that trained.
        served = [task.served(batch) for batch in batches]
        rows = [task.inputs(batch)[0].shape[0] for batch in served]
        cut = any(part is not whole for part, whole in zip(served, batches, strict=True))
        for index, batch in enumerate(served):
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
                loss = (out["loss"] * (rows[index] / sum(rows)) if cut
                        else out["loss"] / cfg.grad_accum)
                self.scaler.scale(loss).backward()
            step_loss += loss.detach()
        # after the backward passes, so the global RNG serves loader and dropout in the order
        # of drawing each step's batches when it begins
        self._draw_ahead(self.step + 1)
        if self.dist.enabled:  # the step's loss is the mean over ranks
            step_loss = mean_over_ranks(step_loss, self.dist)
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
        with the run, which stops here anyway)."""
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
        for note in self.sampler.notes():
            self.callbacks.on_event(note)
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
        # this rank's counts and loader counters, summed over ranks in one host all-reduce
        local = self.cursor.local_counters()
        counts = [window.samples, window.tokens, *(local.values() if local else ())]
        if self.dist.enabled:
            counts = [int(v) for v in all_reduce(counts, torch.distributed.ReduceOp.SUM,
                                                 self.dist)]
        samples, tokens = counts[:2]
        counters = None if local is None else dict(zip(local, counts[2:], strict=True))
        record = {"step": self.step,
                  "loss": sum(value for _, value in window.recent) / len(window.recent),
                  "losses": {k: sum(v) / len(v) for k, v in sorted(per_task.items())}, "lr": lr,
                  "tokens_per_s": tokens / elapsed,
                  "samples_per_s": samples / elapsed, "skipped_batches": window.skipped,
                  **self.sampler.log_fields(self.step)}
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

    def _stop_requested(self, should_stop: Callable[[], bool] | None) -> bool:
        """Whether to stop after this step: asked every step in one process; under torchrun
        agreed by all ranks every `STOP_CHECK_EVERY` steps, true on all when true on any."""
        if self.dist.enabled and (self.step % STOP_CHECK_EVERY
                                  or self.step == self.config.steps):
            return False
        return any_rank(self.dist, should_stop is not None and should_stop())

    def _train(self, should_stop: Callable[[], bool] | None) -> TrainResult:
        cfg = self.config
        metrics_path = self.metrics_path()
        if metrics_path is not None:
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            if self.step == 0 and self.dist.is_main:
                metrics_path.write_text("")
        self.callbacks.on_start(self)
        self.cursor.fast_forward()
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
                        "transcripts); check the schedule against the data")
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
            stop = self._stop_requested(should_stop)
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
        result.data = self.cursor.counters()
        return result
