"""Per-target-modality losses: cross-entropy for text, mean squared error for the rest."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

# The tokenizers' padding id, defined once where the ids are made: the loaders pad with it and
# the text loss and the model skip it.
from pipeline.tokenizer import PAD_ID


def modality_loss(modality: str, output: Tensor, target: Tensor) -> Tensor:
    """Scalar loss of ``output`` against ``target``; text ignores padding (PAD_ID).

    Text is the summed cross-entropy over the real tokens divided by their count (at least 1):
    the mean over real tokens, and for a target that is all padding a zero that still depends
    on the logits, so the step's graph stays connected, no NaN comes from an empty mean, and
    no branch reads the labels back to the host (a GPU sync on every step).
    """
    if modality == "text":
        logits = output.float().flatten(0, 1)  # (B*L, V)
        labels = target.flatten()  # (B*L,)
        total = F.cross_entropy(logits, labels, ignore_index=PAD_ID, reduction="sum")  # ()
        return total / (labels != PAD_ID).sum().clamp(min=1)
    return F.mse_loss(output.float(), target.float())
