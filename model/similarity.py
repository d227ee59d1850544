"""Clip-to-clip similarity from per-frame global tokens, vectorised.

A clip is T per-frame global tokens (T, D), L2-normalised. Strategies, for query q and target c:
- diagonal_mean (the paper's): (1/T) sum_t cos(q_t, c_t), which is <q, c> / T on the flattened
  (T * D) vectors;
- diagonal_max: max_t cos(q_t, c_t);
- mean: the mean of cos(q_s, c_t) over all T x T pairs, i.e. <mean_s q_s, mean_t c_t> (mean pooling);
- max: the max of cos(q_s, c_t) over all T x T pairs.
A query with fewer frames than the target (T_q < T) slides over the target and scores the best offset.
Windows scoring within TIE_TOLERANCE of the best fit the query equally well (frames showing the same
scene give the same tokens), so the offset reported is the centre of the run of such windows around
the best one: the placement nearest to all of them, rather than whichever rounding noise favoured.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

Strategy = Literal["diagonal_mean", "diagonal_max", "mean", "max"]
STRATEGIES: tuple[Strategy, ...] = ("diagonal_mean", "diagonal_max", "mean", "max")
TIE_TOLERANCE = 0.002  # cosine: windows this close to the best fit equally (video coding noise on still frames)


def normalize(tokens: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension (what every strategy below expects)."""
    return F.normalize(tokens.float(), dim=-1)


def clip_scores(
    query: torch.Tensor, targets: torch.Tensor, strategy: Strategy = "diagonal_mean", chunk: int = 256
) -> torch.Tensor:
    """query: (Q, T, D), targets: (N, T, D), both normalised -> scores (Q, N)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if query.shape[1:] != targets.shape[1:]:
        raise ValueError(f"query frames/dims {tuple(query.shape[1:])} != targets {tuple(targets.shape[1:])}")
    frames = query.shape[1]
    if strategy == "diagonal_mean":
        return query.flatten(1) @ targets.flatten(1).t() / frames  # (Q, T*D) @ (T*D, N)
    if strategy == "mean":
        return query.mean(dim=1) @ targets.mean(dim=1).t()
    if strategy == "diagonal_max":
        out = torch.full((query.shape[0], targets.shape[0]), -torch.inf, dtype=query.dtype, device=query.device)
        for t in range(frames):
            torch.maximum(out, query[:, t] @ targets[:, t].t(), out=out)
        return out
    flat_targets = targets.flatten(0, 1)  # (N*T, D)
    parts = []
    for start in range(0, query.shape[0], chunk):
        block = query[start : start + chunk]
        pairs = block.flatten(0, 1) @ flat_targets.t()  # (q*T, N*T)
        pairs = pairs.view(block.shape[0], frames, targets.shape[0], frames)
        parts.append(pairs.amax(dim=(1, 3)))
    return torch.cat(parts)


class SlidingMatch(NamedTuple):
    scores: torch.Tensor  # (N,) best score per target
    offsets: torch.Tensor  # (N,) frame offset of the matched window in the target (see centre_of_best_run)


def sliding_scores(
    query: torch.Tensor,
    targets: torch.Tensor,
    strategy: Strategy = "diagonal_mean",
    tie_tolerance: float = TIE_TOLERANCE,
) -> SlidingMatch:
    """A shorter query (T_q, D) against targets (N, T, D), T_q <= T: best window of T_q frames per target."""
    length, frames = query.shape[0], targets.shape[1]
    if length > frames:
        raise ValueError(f"query has {length} frames, more than the target's {frames}")
    windows = targets.unfold(1, length, 1).permute(0, 1, 3, 2)  # (N, offsets, T_q, D)
    per_frame = torch.einsum("td,nwtd->nwt", query, windows)  # (N, offsets, T_q)
    if strategy == "diagonal_mean":
        per_window = per_frame.mean(dim=-1)
    elif strategy == "diagonal_max":
        per_window = per_frame.amax(dim=-1)
    elif strategy == "mean":
        per_window = torch.einsum("d,nwd->nw", query.mean(dim=0), windows.mean(dim=2))
    elif strategy == "max":
        per_window = torch.einsum("sd,nwtd->nwst", query, windows).amax(dim=(-1, -2))
    else:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    return SlidingMatch(*centre_of_best_run(per_window, tie_tolerance))


def centre_of_best_run(per_window: torch.Tensor, tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """per_window (N, W) -> the best score (N,) and the centre offset (N,) of the run of consecutive
    windows around the best one that score within `tolerance` of it (rounded up between two)."""
    best, at = per_window.max(dim=1)
    apart = per_window < (best - tolerance)[:, None]  # (N, W): windows outside the tie
    index = torch.arange(per_window.shape[1], device=per_window.device)
    first = torch.where(apart & (index < at[:, None]), index, -1).amax(dim=1) + 1
    last = torch.where(apart & (index > at[:, None]), index, per_window.shape[1]).amin(dim=1) - 1
    return best, torch.div(first + last + 1, 2, rounding_mode="floor")
