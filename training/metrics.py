"""Retrieval metrics, vectorised. Ties are counted pessimistically: a target that scores exactly as
high as the correct one is ranked ahead of it, so constant scores give the worst rank, never R@1 = 1.
"""

from __future__ import annotations

import torch


def correct_ranks(scores: torch.Tensor, correct: torch.Tensor | None = None) -> torch.Tensor:
    """scores: (Q, N); correct[i] is query i's right target (default: i). -> 1-based ranks (Q,)."""
    if correct is None:
        correct = torch.arange(scores.shape[0], device=scores.device)
    right = scores.gather(1, correct.view(-1, 1))  # (Q, 1)
    return (scores >= right).sum(dim=1)  # itself, every tie and every higher score


def retrieval_metrics(scores: torch.Tensor, correct: torch.Tensor | None = None) -> dict[str, float]:
    """R@1/5/10, median and mean rank of the correct target."""
    ranks = correct_ranks(scores, correct).float()
    return {
        "R@1": (ranks <= 1).float().mean().item(),
        "R@5": (ranks <= 5).float().mean().item(),
        "R@10": (ranks <= 10).float().mean().item(),
        "median_rank": ranks.median().item(),
        "mean_rank": ranks.mean().item(),
        "queries": int(ranks.numel()),
    }
