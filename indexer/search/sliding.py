"""Exact scores of a query at every frame offset of a track, and the moments picked from them (numpy).

A query q (Q, D) placed at offset o of a track c (L, D) aligns n = min(Q, L) frame pairs: track frame
max(o, 0) + j with query frame max(-o, 0) + j, j < n. A query no longer than the track slides inside it
(o = 0 .. L - Q); a longer one slides over the whole track (o = L - Q .. 0: the track starts inside
the query). The strategies of `model.similarity` score the aligned block, the track zero-padded to the
query's Q frames at its place when it is shorter (the query's frames outside it count 0): diagonal_mean is
(1/Q) sum of the n aligned cosines (the inner product of the two concatenations over the query's, Q; the
mean of the aligned cosines when n = Q), diagonal_max their maximum, mean the sum of all Q x n cosines over
Q^2, max the largest of them (the maxima include the padding's 0 when n < Q). So a short track matching
part of a long query scores its share of it (n/Q of a perfect match at most), never more than a source
matching the whole query as well; a query no longer than the track (n = Q), and the official clip-vs-clip
scores, are unchanged. Windows within
`TIE_TOLERANCE` of a best one fit equally well (still scenes give equal tokens): a moment is the
centre of such a run, and further moments are the best runs among offsets whose frames do not
overlap any chosen moment's.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from model.similarity import TIE_TOLERANCE, Strategy

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class OffsetScores(NamedTuple):
    offsets: IntArray  # (W,) offsets o, ascending
    scores: FloatArray  # (N, W) score of each track at each offset
    aligned: int  # n = min(Q, L): frame pairs aligned at every offset


def offset_range(query_frames: int, track_frames: int) -> IntArray:
    """Every offset of a query of `query_frames` over a track of `track_frames` (see the module)."""
    low, high = min(0, track_frames - query_frames), max(0, track_frames - query_frames)
    return np.arange(low, high + 1, dtype=np.int64)


def aligned_pairs(offsets: IntArray, aligned: int) -> tuple[IntArray, IntArray]:
    """(track frame, query frame) indices (W, n) of the pairs aligned at each offset."""
    steps = np.arange(aligned, dtype=np.int64)[None, :]
    return np.maximum(offsets, 0)[:, None] + steps, np.maximum(-offsets, 0)[:, None] + steps


def score_offsets(query: FloatArray, tracks: FloatArray, strategy: Strategy = "diagonal_mean") -> OffsetScores:
    """query (Q, D), tracks (N, L, D) of equal length, both L2-normalised -> the scores at every offset."""
    length, frames = query.shape[0], tracks.shape[1]
    offsets = offset_range(length, frames)
    aligned = min(length, frames)
    cosines = tracks @ query.T  # (N, L, Q)
    if strategy in ("diagonal_mean", "diagonal_max"):
        rows, cols = aligned_pairs(offsets, aligned)
        pairs = cosines[:, rows, cols]  # (N, W, n)
        if strategy == "diagonal_mean":
            scores = pairs.sum(axis=-1) / length  # over the query's frames: those outside the track count 0
        else:
            scores = pairs.max(axis=-1) if length <= frames else np.maximum(pairs.max(axis=-1), 0.0)
        return OffsetScores(offsets, scores.astype(np.float32), aligned)
    if length > frames:  # every query frame meets every track frame at any offset (the padding adds zeros)
        flat = cosines.reshape(len(cosines), -1)  # (N, L * Q)
        total = flat.sum(axis=1) / (length * length) if strategy == "mean" else np.maximum(flat.max(axis=1), 0.0)
        scores = np.repeat(total[:, None], len(offsets), axis=1)  # (N, W): the same at every offset
        return OffsetScores(offsets, np.ascontiguousarray(scores, dtype=np.float32), aligned)
    # mean / max of the query inside the track: every pair of the aligned block, from per-row sums or maxima
    line = cosines.sum(axis=2) if strategy == "mean" else cosines.max(axis=2)  # (N, L): over the whole query
    windows = sliding_window_view(line, aligned, axis=1)  # (N, W, n)
    scores = windows.sum(axis=-1) / (aligned * aligned) if strategy == "mean" else windows.max(axis=-1)
    return OffsetScores(offsets, np.ascontiguousarray(scores, dtype=np.float32), aligned)


def frame_cosines(query: FloatArray, track: FloatArray, offset: int) -> tuple[float, ...]:
    """Cosine of each aligned (query frame, track frame) pair at `offset`; query (Q, D), track (L, D)."""
    aligned = min(len(query), len(track))
    rows, cols = aligned_pairs(np.array([offset], dtype=np.int64), aligned)
    return tuple(float(x) for x in np.einsum("nd,nd->n", track[rows[0]], query[cols[0]]))


def pick_moments(
    offsets: IntArray, scores: FloatArray, aligned: int, count: int, tolerance: float = TIE_TOLERANCE
) -> list[int]:
    """Up to `count` indices into offsets/scores (W,), offsets ascending (gaps allowed: a run of tied
    windows never crosses one): the centre of the best run of tied windows, then the best among the
    windows whose aligned track frames overlap no chosen one, and so on."""
    open_ = np.ones(len(offsets), dtype=bool)
    chosen: list[int] = []
    starts = np.maximum(offsets, 0)
    gap = np.r_[False, np.diff(offsets) != 1]  # offsets not scored in between: a run stops there
    while len(chosen) < count and open_.any():
        masked = np.where(open_, scores, -np.inf)
        best = int(np.argmax(masked))
        outside = ~open_ | (masked < masked[best] - tolerance)
        outside[:best] |= gap[1 : best + 1]  # index i ends a run that cannot pass the gap after it
        outside[best + 1 :] |= gap[best + 1 :]
        before, after = np.flatnonzero(outside[:best]), np.flatnonzero(outside[best + 1 :])
        first = int(before[-1]) + 1 if len(before) else 0
        last = best + int(after[0]) if len(after) else len(offsets) - 1
        centre = (first + last + 1) // 2
        chosen.append(centre)
        open_ &= np.abs(starts - starts[centre]) >= aligned
    return chosen
