"""Vectorised retrieval metrics against a naive loop, and the pessimistic handling of ties."""

from __future__ import annotations

import statistics

import pytest
import torch

from training.metrics import correct_ranks, retrieval_metrics


def _naive(scores: torch.Tensor) -> dict[str, float]:
    ranks = []
    for i in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda j: (-scores[i, j].item(), j == i))  # ties: i last
        ranks.append(order.index(i) + 1)
    return {
        "R@1": sum(r <= 1 for r in ranks) / len(ranks),
        "R@5": sum(r <= 5 for r in ranks) / len(ranks),
        "R@10": sum(r <= 10 for r in ranks) / len(ranks),
        "median_rank": float(statistics.median_low(ranks)),
        "mean_rank": sum(ranks) / len(ranks),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_naive_loop(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(40, 40, generator=gen)
    scores += torch.eye(40) * 1.5  # mostly right, not always
    scores = (scores * 4).round() / 4  # plenty of ties
    fast, slow = retrieval_metrics(scores), _naive(scores)
    for key, value in slow.items():
        assert fast[key] == pytest.approx(value), key


def test_ties_are_pessimistic() -> None:
    assert correct_ranks(torch.zeros(5, 5)).tolist() == [5] * 5
    assert retrieval_metrics(torch.ones(3, 3))["R@1"] == 0.0
