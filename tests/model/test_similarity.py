"""Vectorised clip similarity against naive loops on seeded data."""

from __future__ import annotations

import pytest
import torch

from model.similarity import STRATEGIES, clip_scores, normalize


def _naive_pair(q: torch.Tensor, c: torch.Tensor, strategy: str) -> float:
    cos = [[float(q[s] @ c[t]) for t in range(c.shape[0])] for s in range(q.shape[0])]
    diagonal = [cos[t][t] for t in range(q.shape[0])]
    if strategy == "diagonal_mean":
        return sum(diagonal) / len(diagonal)
    if strategy == "diagonal_max":
        return max(diagonal)
    flat = [v for row in cos for v in row]
    return sum(flat) / len(flat) if strategy == "mean" else max(flat)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_clip_scores_match_naive_loops(strategy: str) -> None:
    gen = torch.Generator().manual_seed(0)
    query = normalize(torch.randn(5, 4, 8, generator=gen, dtype=torch.float64)).double()
    targets = normalize(torch.randn(7, 4, 8, generator=gen, dtype=torch.float64)).double()
    fast = clip_scores(query, targets, strategy, chunk=2)
    for i in range(5):
        for j in range(7):
            assert fast[i, j].item() == pytest.approx(_naive_pair(query[i], targets[j], strategy), abs=1e-12)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        clip_scores(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), "median")  # type: ignore[arg-type]
