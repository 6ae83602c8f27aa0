"""The one owner of a training checkpoint's content: its stateful parts, how each is checked
before anything is restored, and the conversion of older formats.

The folder (`omnilatent.checkpoint.files`: atomic write, manifest of file hashes) holds the
weights (model.safetensors; under FSDP each rank's shards of them and of the optimizer state,
`omnilatent.checkpoint.sharded`), the optimizer, scheduler and GradScaler (training.pt) and
state.json: model_config, train_config, hooks, card, origin (what was trained, from where),
``sampler`` (`omnilatent.tasks.TaskSampler`), ``log_window`` (`LogWindow`), ``rng``, ``data``
(`DataCursor`, the data source's name, total counters) and ``distributed`` (the world size;
over 1, each rank's rng and data position). Each part checks its own state, so a new field of
a part touches that part's module; a new part, this module and the part's."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from omnilatent.checkpoint.card import CheckpointCard
from omnilatent.checkpoint.files import (
    STATE_FILE,
    TRAINING_FILE,
    begin_checkpoint,
    is_sharded,
    load_checkpoint,
    prune_checkpoints,
    read_state,
    save_checkpoint,
    step_dir_name,
)
from omnilatent.checkpoint.json_values import is_count
from omnilatent.checkpoint.sharded import load_shards, save_shards
from omnilatent.config import OmniLatentConfig
from omnilatent.errors import CheckpointError, ConfigError, OmniLatentError
from omnilatent.training.config import TrainConfig, lr_factor
from omnilatent.training.cursor import DataCursor
from omnilatent.training.distributed import (
    barrier,
    broadcast_from_main,
    gather_to_main,
    load_full_state,
)
from omnilatent.training.rng import capture_rng, check_rng_state, restore_rng
from omnilatent.training.run_log import LogWindow

if TYPE_CHECKING:
    from omnilatent.training.trainer import Trainer

STATE_KEYS = ("model_config", "train_config", "hooks", "rng", "sampler", "data", "card")


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` in the current layout: format 3 and older kept the sampler's state as
    ``pair_sampler``, a curriculum's beside it as ``extra``."""
    if "sampler" in state or "pair_sampler" not in state:
        return state
    state = dict(state)
    pairs, extra = state.pop("pair_sampler"), state.pop("extra", None)
    state["sampler"] = ({k: v for k, v in extra.items() if k != "phase_step"}
                        if isinstance(extra, dict) and extra else pairs)
    return state


class Checkpointer:
    """Saves ``trainer``'s parts into its save dir and restores them from a checkpoint. Each
    checkpoint is hashed once per process (`prune_checkpoints`' ``verified``), not at every
    save."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._verified: set[Path] = set()

    def save(self) -> Path:
        """Checkpoint the current step and prune old checkpoints. Under torchrun every rank
        calls it: rank 0 writes, with every rank's data position and RNG states (under FSDP
        every rank first writes its shards into rank 0's temporary folder), and all ranks
        wait until the checkpoint is complete."""
        t = self.trainer
        save_dir = t.config.save_dir
        if save_dir is None:
            raise ConfigError("cannot save a checkpoint: TrainConfig.save_dir is not set")
        counters = t.cursor.counters()
        # each rank's part, and its samples and tokens since the last record (the trainer
        # sums them over ranks at log intervals; the checkpoint keeps their total)
        gathered = gather_to_main(t.dist, ({"rng": capture_rng(), **t.cursor.state_dict()},
                                           (t.window.samples, t.window.tokens)))
        tmp, weights = None, None
        if t.dist.fsdp:  # rank 0's temporary folder, or why it has none, on every rank
            try:
                begun = begin_checkpoint(save_dir, t.step) if t.dist.is_main else None
            except CheckpointError as exc:
                begun = exc
            begun = broadcast_from_main(t.dist, begun)
            if isinstance(begun, CheckpointError):
                raise begun
            tmp, optimizer_state = begun, save_shards(begun, t.model, t.optimizer)
        else:
            weights, optimizer_state = t.model.state_dict(), t.optimizer.state_dict()
        path = save_dir / step_dir_name(t.step)
        if gathered is not None:
            window = {**t.window.state_dict(),
                      "samples": sum(samples for _, (samples, _) in gathered),
                      "tokens": sum(tokens for _, (_, tokens) in gathered)}
            ranks = [part for part, _ in gathered]
            path = self._write(save_dir, weights, optimizer_state, counters, ranks, window, tmp)
        barrier(t.dist)
        return path

    def _write(self, save_dir: Path, weights: dict[str, Tensor] | None, optimizer_state: dict,
               counters: dict[str, int] | None, ranks: list[dict[str, Any]],
               window: dict[str, Any], tmp: Path | None) -> Path:
        """Rank 0's part of ``save``: the files (``weights`` None: the shards are in
        ``tmp``), then pruning."""
        t = self.trainer
        distributed: dict[str, Any] = {"world_size": t.dist.world_size}
        if t.dist.enabled:
            distributed["ranks"] = ranks
        state = {"model_config": t.model.config.to_dict(),
                 "train_config": t.config.to_dict(),
                 "hooks": [hook.settings() for hook in t.model.hooks.values()],
                 "rng": ranks[0]["rng"],
                 "sampler": t.sampler.state_dict(),
                 "data": {"batches_seen": ranks[0]["batches_seen"], "loader": ranks[0]["loader"],
                          "source": t.data_source, "counters": counters},
                 "distributed": distributed,
                 "log_window": window,
                 "card": None if t.card is None else t.card.to_state(),
                 "origin": t.origin}
        training_state = {"optimizer": optimizer_state, "scheduler": t.scheduler.state_dict(),
                          "scaler": t.scaler.state_dict()}
        path = save_checkpoint(save_dir, t.step, weights, training_state, state,
                               None if t.card is None else t.card.files(), tmp)
        self._verified.add(path.resolve())
        prune_checkpoints(save_dir, t.config.keep_last, keep=path, check=self.check,
                          verified=self._verified)
        t.callbacks.on_checkpoint(path)
        return path

    def check(self, path: Path, state: dict[str, Any]) -> None:
        """CheckpointError with the reason if the trainer could not restore the checkpoint at
        ``path`` (its state.json ``state``): every part's own check. The ``check`` of
        find_latest_checkpoint and prune_checkpoints."""
        state = upgrade(state)
        try:
            missing = [key for key in STATE_KEYS if key not in state]
            if missing:
                raise CheckpointError(f"has no {', '.join(map(repr, missing))} (edited, or "
                                      "not written by a training run)")
            _check_configs(state)
            check_rng_state(state["rng"])
            DataCursor.check_state_dict(state["data"], "'data'")
            if not (state["data"].get("source") is None
                    or isinstance(state["data"]["source"], str)):
                raise CheckpointError("'data.source' must be the data source's name or null")
            _check_distributed(state.get("distributed", {"world_size": 1}))
            self.trainer.sampler.check_state_dict(state["sampler"])
            if "log_window" in state:
                LogWindow.check_state_dict(state["log_window"])
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {STATE_FILE} {exc}") from None
        if state["card"] is not None:
            CheckpointCard.from_state(state["card"], path)

    def check_compatible(self, path: Path, state: dict[str, Any]) -> None:
        """Raise CheckpointError if this run cannot continue the run that wrote ``state``
        (which passed ``check``): another number of processes (each rank's data position
        belongs to one rank of the saved run), another kind of data (checked first: the sizes
        of the model follow from the data), another model or another kind of task sampler."""
        t = self.trainer
        saved_world = state.get("distributed", {}).get("world_size", 1)
        if saved_world != t.dist.world_size:
            raise CheckpointError(
                f"{path} was written by a run of {saved_world} process(es) but this run has "
                f"{t.dist.world_size}: each process's data position and random state belong "
                f"to one process of that run; resume with {saved_world} process(es) in all "
                "(torchrun --nnodes x --nproc_per_node), or start a new run from its weights "
                f"in another save dir (--from {path}: any number of processes)")
        saved = state["data"].get("source")
        if saved is not None and t.data_source is not None and saved != t.data_source:
            raise CheckpointError(
                f"{path} was trained on {saved} data but this run reads {t.data_source} "
                f"data; resume with the data source it was trained on, or start a new run in "
                "another save dir")
        saved_cfg = OmniLatentConfig.from_dict(state["model_config"])
        diffs = [f"{k}: checkpoint {v!r} vs now {getattr(t.model.config, k)!r}"
                 for k, v in saved_cfg.to_dict().items()
                 if getattr(t.model.config, k) != v and k != "gradient_checkpointing"]
        if diffs:
            raise CheckpointError(f"{path} was trained with a different model: " + "; ".join(diffs))
        reason = t.sampler.mismatch(state["sampler"])
        if reason:
            raise CheckpointError(f"{path} {reason}")

    def restore(self, path: Path) -> None:
        """Restore every part from the checkpoint folder ``path``, all checked first: a bad one
        is a CheckpointError that leaves the trainer and the save dir's metrics as they were."""
        t = self.trainer
        state = read_state(path)
        self.check(path, state)
        state = upgrade(state)
        self.check_compatible(path, state)
        sharded = is_sharded(state)  # its shards are read below, at load_shards
        ckpt = load_checkpoint(path, expected=None if sharded else t.model.state_dict())
        training = ckpt.training_state
        if not (isinstance(training, dict)
                and all(isinstance(training.get(k), dict)
                        for k in ("optimizer", "scheduler", "scaler"))):
            raise CheckpointError(f"{path}: {TRAINING_FILE} must hold the optimizer, scheduler "
                                  "and scaler states")
        data, rng = dict(state["data"]), state["rng"]
        if t.dist.enabled:  # this rank's own position and generators
            mine = state["distributed"]["ranks"][t.dist.rank]
            rng = mine["rng"]
            data.update(loader=mine["loader"], batches_seen=mine["batches_seen"],
                        counters=mine["counters"])
        try:  # first: loaders check a position before they take it
            t.cursor.load_state_dict(data)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
        try:
            if sharded:
                load_shards(path, t.model, t.optimizer, training["optimizer"])
            else:
                load_full_state(t.dist, t.model, t.optimizer, ckpt.model_state,
                                training["optimizer"])
            t.scheduler.load_state_dict(training["scheduler"])
            t.scaler.load_state_dict(training["scaler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: {TRAINING_FILE} does not fit this run's optimizer "
                                  f"({type(exc).__name__}: {exc})") from exc
        restore_rng(rng)
        t.sampler.load_state_dict(state["sampler"])
        t.step = state["step"]
        if "log_window" in state:
            t.window.load_state_dict(state["log_window"])
            if not t.dist.is_main:  # the saved counts are every rank's: rank 0 carries them
                t.window.samples = t.window.tokens = 0
        self._note_changes(state["train_config"])
        self._truncate_metrics()
        t.callbacks.on_event(f"resumed from {path} at step {t.step}")

    def _note_changes(self, saved: dict[str, Any]) -> None:
        """Tell the user which settings differ from the saved run's, and the schedule they
        recompute (as nanoGPT does with a changed ``max_iters``): the lr at this step, before
        and now, and a curriculum's phases, shares of the new ``steps``."""
        t = self.trainer
        known = {item.name for item in fields(TrainConfig)} - {"save_dir", "device"}
        changed = [f"{k} {v!r} -> {getattr(t.config, k)!r}" for k, v in saved.items()
                   if k in known and getattr(t.config, k) != v]
        if not changed:
            return
        note = ""
        keys = ("steps", "lr", "warmup_steps", "min_lr_ratio")
        if any(saved.get(key, getattr(t.config, key)) != getattr(t.config, key) for key in keys):
            before = replace(t.config, **{key: saved[key] for key in keys if key in saved})
            lr = [c.lr * lr_factor(t.step, c.effective_warmup, c.steps, c.min_lr_ratio)
                  for c in (before, t.config)]
            note = (f"; the learning-rate schedule is recomputed over {t.config.steps} steps: "
                    f"lr at step {t.step} {lr[0]:.2e} -> {lr[1]:.2e}")
            if hasattr(t.sampler, "spans") and before.steps != t.config.steps:
                note += "; the curriculum's phases are shares of the new total"
        t.callbacks.on_event("resuming with changed settings: " + ", ".join(changed) + note)

    def _truncate_metrics(self) -> None:
        """Drop records a killed run wrote after its last checkpoint, so logs stay exact."""
        t = self.trainer
        path = t.metrics_path()
        if path is None or not path.exists() or not t.dist.is_main:
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= t.step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a half-written last line from a kill
        path.write_text("".join(line + "\n" for line in kept))


def _check_configs(state: dict[str, Any]) -> None:
    for key in ("model_config", "train_config"):
        if not isinstance(state[key], dict):
            raise CheckpointError(f"'{key}' must be an object")
    try:
        OmniLatentConfig.from_dict(state["model_config"])
    except (OmniLatentError, TypeError, ValueError) as exc:
        raise CheckpointError(f"'model_config' is not a valid model configuration ({exc})") \
            from None
    hooks = state["hooks"]
    if not (isinstance(hooks, list)
            and all(isinstance(h, dict) and isinstance(h.get("name"), str) for h in hooks)):
        raise CheckpointError("'hooks' must be a list of hook settings (objects with a name)")


def _check_distributed(state: Any) -> None:
    """``state["distributed"]``: the world size, and each rank's position when over 1."""
    if not (isinstance(state, dict) and is_count(state.get("world_size"))
            and state["world_size"] >= 1):
        raise CheckpointError("'distributed' must be {world_size: an integer >= 1, ranks}")
    if state["world_size"] == 1:
        return
    ranks = state.get("ranks")
    if not (isinstance(ranks, list) and len(ranks) == state["world_size"]
            and all(isinstance(r, dict) and "rng" in r for r in ranks)):
        raise CheckpointError("'distributed.ranks' must hold one {rng, loader, "
                              "batches_seen, counters} per process")
    for rank in ranks:
        DataCursor.check_state_dict(rank, "'distributed.ranks'")
        check_rng_state(rank["rng"])
