"""Vectorised clip similarity against naive loops on seeded data."""

from __future__ import annotations

import pytest
import torch

from model.similarity import STRATEGIES, TIE_TOLERANCE, centre_of_best_run, clip_scores, normalize, sliding_scores


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


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sliding_scores_match_naive_loops(strategy: str) -> None:
    gen = torch.Generator().manual_seed(1)
    query = normalize(torch.randn(3, 8, generator=gen, dtype=torch.float64)).double()
    targets = normalize(torch.randn(6, 7, 8, generator=gen, dtype=torch.float64)).double()
    match = sliding_scores(query, targets, strategy)
    for j in range(6):
        windows = [_naive_pair(query, targets[j, o : o + 3], strategy) for o in range(7 - 3 + 1)]
        best = max(windows)
        assert match.scores[j].item() == pytest.approx(best, abs=1e-12)
        assert windows[match.offsets[j].item()] >= best - TIE_TOLERANCE


def test_sliding_finds_the_planted_excerpt() -> None:
    gen = torch.Generator().manual_seed(2)
    targets = normalize(torch.randn(10, 16, 32, generator=gen))
    match = sliding_scores(targets[4, 6:11], targets)
    assert match.scores.argmax().item() == 4 and match.offsets[4].item() == 6


def _naive_centre(scores: list[float], tolerance: float) -> int:
    at = scores.index(max(scores))
    first = last = at
    while first > 0 and scores[first - 1] >= scores[at] - tolerance:
        first -= 1
    while last < len(scores) - 1 and scores[last + 1] >= scores[at] - tolerance:
        last += 1
    return (first + last + 1) // 2


def test_offsets_are_the_centre_of_the_tie_around_the_best_window() -> None:
    gen = torch.Generator().manual_seed(5)
    scores = torch.rand(200, 12, generator=gen, dtype=torch.float64)
    scores[::3, 2:9] = scores[::3, 2:9].clamp(max=0.3) + 0.9  # plateaus of near-equal windows
    scores[1::3, 7:] = 1.0 + 0.001 * torch.rand(67, 5, generator=gen, dtype=torch.float64)
    for tolerance in (0.0, 0.005, 0.05):
        best, offsets = centre_of_best_run(scores, tolerance)
        for j in range(200):
            assert best[j].item() == scores[j].max().item()
            assert offsets[j].item() == _naive_centre(scores[j].tolist(), tolerance)


def test_a_query_matching_a_still_scene_lands_in_its_middle() -> None:
    gen = torch.Generator().manual_seed(6)
    scene = normalize(torch.randn(3, 16, generator=gen))
    target = scene[torch.tensor([0] * 4 + [1] * 9 + [2] * 3)]  # frames 4..12 show the same still scene
    match = sliding_scores(scene[1:2].expand(3, -1), target[None])
    assert match.offsets.item() == 7  # the tied windows start at 4..10: the centre, not the first or last


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        clip_scores(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="more than the target"):
        sliding_scores(torch.zeros(5, 3), torch.zeros(2, 4, 3))
