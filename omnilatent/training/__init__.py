"""Training: the trainer, its configuration, checkpoints, data helpers and tasks."""

from omnilatent.training.config import TrainConfig
from omnilatent.training.data import (
    ResumableLoader,
    SyntheticMultimodalDataset,
    build_dataloader,
    collate_multimodal,
)
from omnilatent.training.trainer import Trainer, TrainerCallbacks, TrainResult

__all__ = ["ResumableLoader", "SyntheticMultimodalDataset", "TrainConfig", "TrainResult", "Trainer",
           "TrainerCallbacks", "build_dataloader", "collate_multimodal"]
