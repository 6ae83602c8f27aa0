"""The OmniLatent network: backbone, modality codecs, sequence adapter, losses."""

from omnilatent.model.omnilatent import MODALITY_INDEX, OmniLatentModel

__all__ = ["MODALITY_INDEX", "OmniLatentModel"]
