"""Evaluation metrics as plain functions of predictions and references.

Kept free of the model and the data so each can be checked on hand-made inputs with known
answers (tests/test_eval_metrics.py).

Notation: N queries (= candidates), L text positions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from pipeline.modalities import PAD_ID


def correlation_distance(predictions: Tensor, candidates: Tensor) -> Tensor:
    """(N, ...) and (M, ...) -> (N, M): 1 - Pearson correlation of the flattened values.

    Not the mean squared error: a prediction cannot know what the other modality does not
    carry (a video's brightness and contrast, a sound's loudness), and raw distances rank
    candidates by exactly those. Centring each vector and comparing directions leaves what the
    source can predict: where and in which colour something is, which bands sound."""
    p = _centred_unit(predictions)  # (N, K)
    c = _centred_unit(candidates)  # (M, K)
    return 1.0 - p @ c.T


def _centred_unit(x: Tensor) -> Tensor:
    flat = x.reshape(x.shape[0], -1).double()
    flat = flat - flat.mean(dim=1, keepdim=True)
    return flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-12)


def retrieval_ranks(distances: Tensor, labels: Sequence[object] | None = None) -> Tensor:
    """Rank (1 = best) of the first correct candidate for every query: (N,) long.

    Without labels, the correct candidate of query i is candidate i (the query's own window).
    With labels, any candidate with the query's label is correct, and the rank is that of the
    nearest one. Ties count against the query (a candidate at an equal distance ranks ahead),
    so a model whose predictions are all the same cannot score above chance."""
    n = distances.shape[0]
    if distances.shape != (n, n):
        raise ValueError(f"distances must be square (queries = candidates), got "
                         f"{tuple(distances.shape)}")
    correct = _correct_mask(n, labels, distances.device)  # (N, N)
    best_correct = distances.masked_fill(~correct, math.inf).min(dim=1).values  # (N,)
    ahead = ((distances <= best_correct[:, None]) & ~correct).sum(dim=1)  # (N,)
    return ahead + 1


def retrieval_metrics(distances: Tensor, labels: Sequence[object] | None = None
                      ) -> dict[str, float]:
    """R@1, R@5, median rank, and what a random ranking would score (``chance_*``)."""
    n = distances.shape[0]
    ranks = retrieval_ranks(distances, labels).double()
    correct = _correct_mask(n, labels, distances.device).sum(dim=1).double()  # (N,) per query
    return {"r1": float((ranks <= 1).double().mean()), "r5": float((ranks <= 5).double().mean()),
            "median_rank": float(ranks.median()), "chance_r1": float((correct / n).mean()),
            "chance_r5": float(torch.tensor([_chance_at(n, int(k), 5) for k in correct]).mean()),
            "chance_median_rank": float(torch.tensor(
                [(n + 1) / (int(k) + 1) for k in correct]).median()),
            "queries": n}


def _correct_mask(n: int, labels: Sequence[object] | None, device: torch.device) -> Tensor:
    if labels is None:
        return torch.eye(n, dtype=torch.bool, device=device)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} queries")
    ids = {label: i for i, label in enumerate(dict.fromkeys(labels))}
    codes = torch.tensor([ids[label] for label in labels], device=device)  # (N,)
    return codes[:, None] == codes[None, :]


def _chance_at(n: int, k: int, top: int) -> float:
    """P(at least one of k correct candidates among the first `top` of a random order of n)."""
    top = min(top, n)
    return 1.0 - math.comb(n - k, top) / math.comb(n, top)


def token_accuracy(predicted: Tensor, reference: Tensor) -> tuple[int, int]:
    """(matches, reference tokens): position-wise agreement where the reference is not padding.

    ``predicted`` (B, L') is free-running greedy output, not teacher-forced, so a model is not
    credited for continuing a prefix it was given; positions it did not produce count as wrong."""
    length = reference.shape[1]
    if predicted.shape[1] < length:
        pad = predicted.new_zeros(predicted.shape[0], length - predicted.shape[1])
        predicted = torch.cat([predicted, pad], dim=1)
    keep = reference != PAD_ID  # (B, L)
    hits = (predicted[:, :length] == reference) & keep
    return int(hits.sum()), int(keep.sum())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings (insertions, deletions, substitutions)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def character_errors(hypothesis: str, reference: str) -> tuple[int, int]:
    """(edits, reference characters): summed over windows, their ratio is the corpus CER."""
    return edit_distance(hypothesis, reference), len(reference)


def psnr(prediction: Tensor, target: Tensor, peak_to_peak: float = 2.0) -> Tensor:
    """Per-sample PSNR in dB of (B, ...) tensors whose values span ``peak_to_peak`` ([-1, 1]
    pixels: 2). An exact match is capped at 100 dB instead of infinity."""
    mse = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    return 10.0 * torch.log10(peak_to_peak**2 / mse.clamp(min=peak_to_peak**2 * 1e-10))
