"""The training loop: AdamW, warmup + cosine, clipping, accumulation, AMP, exact resume.

Exact resume rests on three things being restored together from a checkpoint: the weights and
optimizer/scheduler/scaler state, every RNG (including the generator that picks each step's
task), and the data position (the loader's own state, or a count of batches to skip). On CPU
with 0 loader workers a resumed run is then bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from omnilatent.config import OmniLatentConfig
from omnilatent.errors import CheckpointError, ConfigError, OmniLatentError
from omnilatent.inference.card import CheckpointCard
from omnilatent.model import OmniLatentModel
from omnilatent.training.checkpoint import (
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from omnilatent.training.config import TrainConfig
from omnilatent.training.rng import capture_rng, restore_rng
from omnilatent.training.tasks import PairSampler, Task, content_tokens

METRICS_FILE = "metrics.jsonl"
MAX_SKIPPED_IN_A_ROW = 1000  # batches no task could use, before the run is called stuck


class TrainerCallbacks:
    """Hooks for a front end (the CLI draws progress with them). All methods are optional."""

    def on_start(self, trainer: Trainer) -> None: ...

    def on_step(self, step: int, total: int, loss: float, task: str) -> None: ...

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
    image ``(B, 3, H, W)``, video ``(B, 3, T, H, W)``). If it has ``state_dict`` /
    ``load_state_dict`` its position is checkpointed; otherwise resume skips the batches
    already consumed.

    ``card`` goes into every checkpoint so that it can be used without the training command
    (see `omnilatent.inference.card`). ``evaluator`` measures the model on held-out data
    (``config.eval_every``); its metrics are appended to metrics.jsonl as
    ``{"step", "eval"}`` records. It runs between RNG snapshots, so it never changes the run.
    """

    def __init__(
        self,
        model: OmniLatentModel,
        config: TrainConfig,
        dataloader: Any,
        callbacks: TrainerCallbacks | None = None,
        card: CheckpointCard | None = None,
        evaluator: Callable[[OmniLatentModel], dict[str, Any]] | None = None,
    ) -> None:
        self.config = config
        self.card = card
        self.evaluator = evaluator
        self.callbacks = callbacks or TrainerCallbacks()
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
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
        self.forward_model: Callable[..., dict] = (
            torch.compile(self.model) if config.compile else self.model
        )
        self.pair_sampler = PairSampler(config.seed)
        self.step = 0
        self.batches_seen = 0
        self._skip_batches = 0
        self._iterator: Iterator | None = None

    # ------------------------------------------------------------- overridable
    def select_task(self, batch: dict) -> Task | None:
        """The task for this step, or None to skip the batch. Default: every pair in turn."""
        return self.pair_sampler.next(batch)

    def extra_state(self) -> dict[str, Any]:
        """Subclasses add their own resumable state (e.g. the curriculum phase)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Counterpart of ``extra_state``."""

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

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, Tensor) else v
                for k, v in batch.items()}

    # ------------------------------------------------------------- checkpoints
    def _metrics_path(self) -> Path | None:
        return None if self.config.save_dir is None else self.config.save_dir / METRICS_FILE

    def save(self) -> Path:
        """Checkpoint the current step into ``save_dir`` and prune old checkpoints."""
        if self.config.save_dir is None:
            raise ConfigError("cannot save a checkpoint: TrainConfig.save_dir is not set")
        loader_state = (self.dataloader.state_dict()
                        if hasattr(self.dataloader, "state_dict") else None)
        state = {
            "model_config": self.model_config.to_dict(),
            "train_config": self.config.to_dict(),
            "hooks": [hook.settings() for hook in self.model.hooks.values()],
            "rng": capture_rng(),
            "pair_sampler": self.pair_sampler.state_dict(),
            "data": {"batches_seen": self.batches_seen, "loader": loader_state},
            "extra": self.extra_state(),
            "card": None if self.card is None else self.card.to_state(),
        }
        training_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        path = save_checkpoint(self.config.save_dir, self.step, self.model.state_dict(),
                               training_state, state,
                               None if self.card is None else self.card.files())
        prune_checkpoints(self.config.save_dir, self.config.keep_last)
        self.callbacks.on_checkpoint(path)
        return path

    def resume(self, path: Path) -> None:
        """Restore weights, optimizer, scheduler, scaler, RNGs and data position from ``path``."""
        ckpt = load_checkpoint(Path(path))
        saved_cfg = OmniLatentConfig.from_dict(ckpt.state["model_config"])
        if saved_cfg != self.model_config:
            diffs = [f"{k}: checkpoint {v!r} vs now {getattr(self.model_config, k)!r}"
                     for k, v in saved_cfg.to_dict().items()
                     if getattr(self.model_config, k) != v and k != "gradient_checkpointing"]
            if diffs:
                raise CheckpointError(f"{path} was trained with a different model: "
                                      + "; ".join(diffs))
        try:
            self.model.load_state_dict(ckpt.model_state)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path}: weights do not fit the model (registered hooks differ?): {exc}"
            ) from exc
        self.optimizer.load_state_dict(ckpt.training_state["optimizer"])
        self.scheduler.load_state_dict(ckpt.training_state["scheduler"])
        self.scaler.load_state_dict(ckpt.training_state["scaler"])
        restore_rng(ckpt.state["rng"])
        self.pair_sampler.load_state_dict(ckpt.state["pair_sampler"])
        self.step = int(ckpt.state["step"])
        data = ckpt.state["data"]
        self.batches_seen = int(data["batches_seen"])
        if data.get("loader") is not None and hasattr(self.dataloader, "load_state_dict"):
            self.dataloader.load_state_dict(data["loader"])
        else:
            self.batches_seen, self._skip_batches = 0, int(data["batches_seen"])
        self.load_extra_state(ckpt.state.get("extra", {}))
        changed = [f"{k} {v!r} -> {getattr(self.config, k)!r}"
                   for k, v in ckpt.state["train_config"].items()
                   if k not in ("save_dir", "device") and
                   (str(getattr(self.config, k)) if k == "save_dir" else getattr(self.config, k))
                   != v]
        if changed:
            self.callbacks.on_event("resuming with changed settings: " + ", ".join(changed))
        self._truncate_metrics()
        self.callbacks.on_event(f"resumed from {path} at step {self.step}")

    def _truncate_metrics(self) -> None:
        """Drop records a killed run wrote after its last checkpoint, so logs stay exact."""
        path = self._metrics_path()
        if path is None or not path.exists():
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
        if path is not None:
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        self.callbacks.on_eval(record)
        return record

    # ------------------------------------------------------------- training
    def _train_step(self) -> tuple[Task, float, int, int] | None:
        """One optimizer step over ``grad_accum`` batches: (task, loss, samples, tokens)."""
        cfg = self.config
        mcfg = self.model_config
        self.model.train()
        task: Task | None = None
        total_loss, samples, tokens = 0.0, 0, 0
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else nullcontext())
        for _micro in range(cfg.grad_accum):
            batch = self._next_batch()
            if task is None:
                task = self.select_task(batch)
                if task is None:
                    return None
            batch = self._to_device(batch)
            source, target = task.inputs(batch)
            with autocast:
                out = self.forward_model(task.source, source, task.target, target=target)
            loss = out["loss"] / cfg.grad_accum
            self.scaler.scale(loss).backward()
            total_loss += float(loss.detach())
            samples += source.shape[0]
            tokens += content_tokens(task.source, source, mcfg.audio_stride, mcfg.patch_size,
                                     mcfg.tubelet_size)
        if not math.isfinite(total_loss):
            raise OmniLatentError(
                f"loss became {total_loss} at step {self.step + 1} (task {task.name}); "
                "lower --lr or enable gradient clipping"
            )
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return task, total_loss, samples, tokens

    def train(self, should_stop: Callable[[], bool] | None = None) -> TrainResult:
        """Run until ``config.steps`` (or until ``should_stop()`` turns true after a step, in
        which case a checkpoint is written when ``save_dir`` is set)."""
        cfg = self.config
        metrics_path = self._metrics_path()
        if metrics_path is not None:
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            if self.step == 0:
                metrics_path.write_text("")
        self.callbacks.on_start(self)
        self._fast_forward()
        result = TrainResult(step=self.step, interrupted=False, last_checkpoint=None)
        # Losses are averaged over the last log_interval steps (a sliding window), so with the
        # balanced task cycle every record mixes the target modalities in the same proportion.
        recent: deque[tuple[str, float]] = deque(maxlen=cfg.log_interval)
        window_samples = window_tokens = skipped = in_a_row = 0
        window_start = time.perf_counter()
        while self.step < cfg.steps:
            lr = self.optimizer.param_groups[0]["lr"]
            outcome = self._train_step()
            if outcome is None:
                skipped += 1
                in_a_row += 1
                if in_a_row >= MAX_SKIPPED_IN_A_ROW:
                    raise OmniLatentError(
                        f"{in_a_row} batches in a row could serve no task of step "
                        f"{self.step + 1} (e.g. a phase of text tasks only, on data without "
                        "transcripts); check the schedule against the data"
                    )
                continue
            in_a_row = 0
            task, loss, samples, tokens = outcome
            self.step += 1
            recent.append((task.name, loss))
            window_samples += samples
            window_tokens += tokens
            result.history.append({"step": self.step, "task": task.name, "loss": loss})
            self.callbacks.on_step(self.step, cfg.steps, loss, task.name)
            if self.step % cfg.log_interval == 0 or self.step == cfg.steps:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                per_task: dict[str, list[float]] = defaultdict(list)
                for name, value in recent:
                    per_task[name].append(value)
                record = {
                    "step": self.step,
                    "loss": sum(value for _, value in recent) / len(recent),
                    "losses": {k: sum(v) / len(v) for k, v in sorted(per_task.items())},
                    "lr": lr,
                    "tokens_per_s": window_tokens / elapsed,
                    "samples_per_s": window_samples / elapsed,
                    "skipped_batches": skipped,
                    **self.log_fields(),
                }
                if metrics_path is not None:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                self.callbacks.on_log(record)
                result.last_record = record
                window_samples = window_tokens = skipped = 0
                window_start = time.perf_counter()
            stop = should_stop is not None and should_stop()
            periodic = cfg.save_every > 0 and self.step % cfg.save_every == 0
            saving = cfg.save_dir is not None and (periodic or self.step == cfg.steps or stop)
            if self._eval_due(saving):  # before the checkpoint, so a resume keeps the record
                result.last_eval = self.run_eval()
            if saving:
                result.last_checkpoint = self.save()
            if stop and self.step < cfg.steps:
                result.interrupted = True
                break
        result.step = self.step
        return result
