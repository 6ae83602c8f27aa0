"""OmniLatent: an all-to-all multimodal transformer with Latent Neural Hooks."""

from omnilatent.config import MODALITIES, OmniLatentConfig
from omnilatent.model import OmniLatentModel
from omnilatent.model.hooks import LatentNeuralHook

__all__ = ["MODALITIES", "LatentNeuralHook", "OmniLatentConfig", "OmniLatentModel"]
__version__ = "0.1.0"
