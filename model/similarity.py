"""Clip-to-clip similarity from per-frame global tokens, vectorised.

A clip is T per-frame global tokens (T, D), L2-normalised. Strategies, for query q and target c:
- diagonal_mean (the paper's): (1/T) sum_t cos(q_t, c_t), which is <q, c> / T on the flattened
  (T * D) vectors;
- diagonal_max: max_t cos(q_t, c_t);
- mean: the mean of cos(q_s, c_t) over all T x T pairs, i.e. <mean_s q_s, mean_t c_t> (mean pooling);
- max: the max of cos(q_s, c_t) over all T x T pairs.
Queries of other lengths slide over whole tracks in `indexer.search.sliding` (numpy), with the same
strategies; TIE_TOLERANCE is where windows fit a query equally well (frames showing the same scene give
the same tokens), so a moment is the centre of the run of such windows around the best one.
"""

from __future__ import annotations

from typing import Literal

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
