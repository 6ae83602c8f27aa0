"""Evaluation metrics on hand-made predictions whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch

from omnilatent.evaluation.metrics import (
    character_errors,
    correlation_distance,
    edit_distance,
    psnr,
    retrieval_metrics,
    retrieval_ranks,
    token_accuracy,
)


def test_ranks_of_own_window_and_of_any_window_with_the_label() -> None:
    # query 0 ranks its own candidate first; query 1 third; query 2 second.
    distances = torch.tensor([[0.1, 0.5, 0.9],
                              [0.2, 0.8, 0.3],
                              [0.4, 0.1, 0.2]])
    assert retrieval_ranks(distances).tolist() == [1, 3, 2]
    # with labels, query 1 (label "a") is right when candidate 0 (also "a") is nearest
    assert retrieval_ranks(distances, ["a", "a", "b"]).tolist() == [1, 1, 2]
    m = retrieval_metrics(distances)
    assert m["r1"] == pytest.approx(1 / 3) and m["r5"] == 1.0 and m["median_rank"] == 2
    assert m["chance_r1"] == pytest.approx(1 / 3) and m["chance_median_rank"] == 2.0


def test_identical_predictions_score_chance_not_better() -> None:
    """A model that ignores its input must not be credited: ties count against the query."""
    torch.manual_seed(0)
    candidates = torch.randn(20, 50)
    same = torch.randn(1, 50).expand(20, -1)
    m = retrieval_metrics(correlation_distance(same, candidates))
    assert m["r1"] == pytest.approx(1 / 20)
    labels = [i % 4 for i in range(20)]
    by_label = retrieval_metrics(correlation_distance(same, candidates), labels)
    assert by_label["r1"] == pytest.approx(0.25) and by_label["chance_r1"] == pytest.approx(0.25)


def test_perfect_predictions_score_one_and_chance_is_exact() -> None:
    torch.manual_seed(0)
    candidates = torch.randn(10, 30)
    m = retrieval_metrics(correlation_distance(candidates + 0.01 * torch.randn(10, 30),
                                               candidates))
    assert m["r1"] == 1.0 and m["median_rank"] == 1.0
    assert m["chance_r5"] == pytest.approx(0.5)
    labels = ["x"] * 5 + ["y"] * 5  # 5 correct of 10: P(one in the top 5) = 1 - C(5,5)/C(10,5)
    assert retrieval_metrics(correlation_distance(candidates, candidates), labels)[
        "chance_r5"] == pytest.approx(1 - 1 / math.comb(10, 5))


def test_correlation_ignores_brightness_and_contrast() -> None:
    """A prediction that has the pattern right but not the level or gain still matches."""
    torch.manual_seed(0)
    pattern = torch.randn(4, 3, 8, 8)
    candidates = 0.3 * pattern + torch.tensor([0.5, -0.2, 0.1, 0.9])[:, None, None, None]
    distances = correlation_distance(pattern, candidates)
    assert torch.allclose(distances.diagonal(), torch.zeros(4, dtype=torch.float64), atol=1e-9)
    assert retrieval_ranks(distances).tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="square"):
        retrieval_ranks(distances[:, :3])


def test_token_accuracy_counts_reference_positions_only() -> None:
    reference = torch.tensor([[5, 6, 7, 2], [8, 9, 0, 0]])  # padding (0) is not counted
    predicted = torch.tensor([[5, 6, 1, 2], [8, 3, 4, 4]])
    assert token_accuracy(predicted, reference) == (4, 6)
    # a shorter prediction counts the missing positions as wrong
    assert token_accuracy(torch.tensor([[5], [8]]), reference) == (2, 6)


def test_edit_distance_and_cer() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "abc") == 0
    assert character_errors("the red circle", "the red circle hums") == (5, 19)


def test_psnr_known_values() -> None:
    target = torch.zeros(2, 3, 4, 4)
    prediction = target.clone()
    prediction[0] += 0.2  # MSE 0.04 on a peak-to-peak range of 2: 10*log10(4/0.04) = 20 dB
    values = psnr(prediction, target)
    assert values[0].item() == pytest.approx(20.0, abs=1e-4)
    assert values[1].item() == pytest.approx(100.0)  # exact match capped
