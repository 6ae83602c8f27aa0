"""Load a checkpoint for use (eval, generate): weights, hooks, tokenizer and data settings.

Only the weights are read (safetensors; the optimizer state is not needed), after the whole
checkpoint verifies against the sizes and hashes in its state.json; a sharded (FSDP)
checkpoint's shards are joined in this process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from omnilatent.checkpoint.card import CheckpointCard
from omnilatent.checkpoint.files import (
    MODEL_FILE,
    STATE_FILE,
    checkpoint_dir,
    find_latest_checkpoint,
    is_sharded,
    verify_checkpoint,
)
from omnilatent.checkpoint.sharded import read_weights
from omnilatent.config import OmniLatentConfig
from omnilatent.errors import CheckpointError, OmniLatentError
from omnilatent.inference.text import TextCodec, codec_for
from omnilatent.model import OmniLatentModel
from omnilatent.model.hooks import LatentNeuralHook
from omnilatent.model.weights_file import load_checked
from pipeline.config import PrepareConfig


@dataclass
class TrainedModel:
    """A model ready for inference (eval mode) and what it needs to read and write data."""

    path: Path  # the checkpoint folder
    step: int
    model: OmniLatentModel
    card: CheckpointCard
    text: TextCodec

    @property
    def data_config(self) -> PrepareConfig:
        """The prepare settings of the training data (the defaults for synthetic runs, whose
        sizes the model config fixes)."""
        if self.card.data_config is None:
            return PrepareConfig()
        return PrepareConfig.from_dict(self.card.data_config)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder itself (or the one holding a file named by `path`), or the newest
    complete checkpoint of a save dir."""
    if path.is_file() or (path / STATE_FILE).is_file():
        return checkpoint_dir(path)
    search = find_latest_checkpoint(path)
    if search.latest is None:
        reasons = "; ".join(f"{p.name}: {why}" for p, why in search.skipped)
        raise CheckpointError(f"{path} is neither a checkpoint folder nor a save dir holding a "
                              f"complete checkpoint" + (f" ({reasons})" if reasons else ""))
    return search.latest


def load_trained(path: str | Path, device: str | torch.device = "cpu",
                 hooks: Sequence[str | Path] = ()) -> TrainedModel:
    """Load the checkpoint at ``path`` (a checkpoint or a save dir) for inference, then
    register the saved Latent Neural Hooks in ``hooks`` (folders written by ``hook.save``)."""
    folder = resolve_checkpoint(Path(path))
    state = verify_checkpoint(folder)
    card = CheckpointCard.from_state(state.get("card"), folder)
    try:
        config = OmniLatentConfig.from_dict(state["model_config"])
        with torch.device("meta"):  # the shapes state.json implies, compared before allocating
            expected = _build(config, state.get("hooks", [])).state_dict()
    except (KeyError, TypeError, AttributeError, OmniLatentError) as err:
        raise CheckpointError(f"{folder}: {STATE_FILE} does not describe a model this version "
                              f"can build ({type(err).__name__}: {err})"[:400]) from None
    try:
        weights = (read_weights(folder, expected) if is_sharded(state)
                   else load_checked(folder / MODEL_FILE, expected))
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{folder / MODEL_FILE} {err}") from None
    model = _build(config, state.get("hooks", []))
    model.load_state_dict(weights)
    for hook_dir in hooks:
        model.register_hook(LatentNeuralHook.load(hook_dir))
    model.to(device).eval()
    return TrainedModel(folder, int(state["step"]), model, card, codec_for(card))


def _build(config: OmniLatentConfig, hooks: Sequence[dict]) -> OmniLatentModel:
    """The model of ``config`` with the hooks of state.json (settings), on torch's current
    default device."""
    model = OmniLatentModel(config)
    for settings in hooks:
        model.register_hook(LatentNeuralHook(**settings))
    return model
