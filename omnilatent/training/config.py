"""Trainer configuration: a validated dataclass stored in every checkpoint's state.json."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omnilatent.config import TRAINING_FIELDS, OmniLatentConfig
from omnilatent.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """How to train. ``steps`` counts optimizer steps (each may accumulate several batches)."""

    steps: int = 1000
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None  # None: 5% of steps (at least 1)
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    grad_accum: int = 1
    amp: bool = True
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    save_dir: Path | None = None
    save_every: int = 0  # 0: only at the end
    keep_last: int = 3  # checkpoints kept on disk; 0 keeps all
    log_interval: int = 16  # one full cycle of the 16 task pairs
    eval_every: int | None = None  # None: with every checkpoint; 0: never (needs an evaluator)

    def __post_init__(self) -> None:
        for name in ("steps", "grad_accum", "log_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("save_every", "keep_last"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.eval_every is not None and (not isinstance(self.eval_every, int)
                                            or self.eval_every < 0):
            raise ConfigError(f"eval_every must be None (with each checkpoint) or an integer "
                              f">= 0 (0: never), got {self.eval_every!r}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(f"warmup_steps must lie in [0, steps={self.steps}], "
                              f"got {self.warmup_steps}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"beta1/beta2 must lie in [0, 1), got {self.beta1}, {self.beta2}")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.save_dir is not None:
            self.save_dir = Path(self.save_dir)

    @property
    def effective_warmup(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return max(1, self.steps // 20)

    @classmethod
    def from_model_config(cls, config: OmniLatentConfig, **overrides: Any) -> TrainConfig:
        """The seed's API: a TrainConfig from the training defaults an OmniLatentConfig carries
        (``learning_rate`` -> ``lr``, ``max_steps`` -> ``steps``, ``mixed_precision`` ->
        ``amp``, ...; see `omnilatent.config.TRAINING_FIELDS`), then ``overrides``. Unset
        fields keep TrainConfig's defaults; ``batch_size`` is the DataLoader's, not ours."""
        settings = {TRAINING_FIELDS[name]: value
                    for name, value in config.training_defaults().items()
                    if TRAINING_FIELDS[name] is not None}
        return cls(**{**settings, **overrides})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["save_dir"] = None if self.save_dir is None else str(self.save_dir)
        return data


def as_train_config(config: TrainConfig | OmniLatentConfig) -> TrainConfig:
    """``config`` itself, or the TrainConfig of an OmniLatentConfig's training defaults (the
    seed's ``Trainer(model, model_config, loader)``)."""
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, OmniLatentConfig):
        return TrainConfig.from_model_config(config)
    raise ConfigError(f"config must be a TrainConfig or an OmniLatentConfig, got "
                      f"{type(config).__name__}")


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
