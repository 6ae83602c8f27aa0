"""Per-target-modality losses: cross-entropy for text, mean squared error for the rest."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

PAD_ID = 0


def modality_loss(modality: str, output: Tensor, target: Tensor) -> Tensor:
    """Scalar loss of ``output`` against ``target``; text ignores padding (id 0).

    A text target that is all padding gives a zero loss that still depends on the logits, so
    the step's graph stays connected and no NaN appears from an empty mean.
    """
    if modality == "text":
        logits = output.float().flatten(0, 1)  # (B*L, V)
        labels = target.flatten()  # (B*L,)
        if not bool((labels != PAD_ID).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits, labels, ignore_index=PAD_ID)
    return F.mse_loss(output.float(), target.float())
