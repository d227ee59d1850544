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

The product kernels the search stages share are here too. The strategies scored along diagonals (`SCAN_STRATEGIES`:
diagonal_mean, diagonal_max) are the ones the scan and the window stage compute from one product of the query with
many stored frames: cosines (Q, P + Q - 1), query frame j by stored frame, the score with the query's first frame
on stored frame p the mean or the max over j of cosines[j, p + j] (`diagonal_reduce`, `diagonal_prefix`). Products
in the store's dtype (`approximate_products`: float16, output rounding <= 2^-11 per cosine) only nominate
(`near_kth`); exact float32 scores rank.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from numpy.lib.stride_tricks import sliding_window_view

from indexer.store.version import as_tensor
from model.similarity import TIE_TOLERANCE, Strategy

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

SCAN_TOLERANCE = 2e-3  # bounds the float16 products' error on a mean of cosines
SCAN_STRATEGIES: tuple[Strategy, ...] = ("diagonal_mean", "diagonal_max")
# float16 GEMMs run natively on CPUs with AVX-512 (AVX512-FP16 / AMX on the Xeons measured); on AVX2-only CPUs
# torch's float16 GEMM costs ~2 ms per query frame per 32k stored frames, converting the block to float32 ~60 ms
# once and then ~0.4 ms per query frame: converting first pays for queries of more than CONVERT_ABOVE frames
NATIVE_HALF = torch.backends.cpu.get_cpu_capability() == "AVX512"
CONVERT_ABOVE = 32  # query frames


class OffsetScores(NamedTuple):
    offsets: IntArray  # (W,) offsets o, ascending
    scores: FloatArray  # (N, W) score of each track at each offset
    aligned: int  # n = min(Q, L): frame pairs aligned at every offset


def offset_range(query_frames: int, track_frames: int) -> IntArray:
    """Every offset of a query of `query_frames` over a track of `track_frames` (see the module)."""
    low, high = min(0, track_frames - query_frames), max(0, track_frames - query_frames)
    return np.arange(low, high + 1, dtype=np.int64)


def spread_frames(length: int, count: int) -> IntArray:
    """`count` frames of a query of `length` spread evenly from its first to its last, ascending (all of them when
    it has no more): the frames that probe the index, or score windows roughly."""
    if length <= count:
        return np.arange(length, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, length - 1, count)).astype(np.int64))


def aligned_pairs(offsets: IntArray, aligned: int) -> tuple[IntArray, IntArray]:
    """(track frame, query frame) indices (W, n) of the pairs aligned at each offset."""
    steps = np.arange(aligned, dtype=np.int64)[None, :]
    return np.maximum(offsets, 0)[:, None] + steps, np.maximum(-offsets, 0)[:, None] + steps


def score_offsets(
    query: FloatArray, tracks: FloatArray, strategy: Strategy = "diagonal_mean", offsets: IntArray | None = None
) -> OffsetScores:
    """query (Q, D), tracks (N, L, D) of equal length, both L2-normalised -> the scores at every offset, or at the
    given `offsets` alone (ascending, each in `offset_range`: the diagonal strategies from their aligned pairs
    alone, Q x D products per offset)."""
    length, frames = query.shape[0], tracks.shape[1]
    aligned = min(length, frames)
    if offsets is not None and strategy in SCAN_STRATEGIES:
        pairs = aligned_cosines(query, tracks, offsets)  # (N, W, n)
        return OffsetScores(offsets, reduce_pairs(pairs, length, strategy), aligned)
    every = score_every_offset(query, tracks, strategy)
    if offsets is None:
        return every
    picked = offsets - every.offsets[0]  # offset_range is contiguous
    return OffsetScores(offsets, np.ascontiguousarray(every.scores[:, picked]), aligned)


def score_every_offset(query: FloatArray, tracks: FloatArray, strategy: Strategy) -> OffsetScores:
    """`score_offsets` at every offset: one product of each track with the query (N, L, Q)."""
    length, frames = query.shape[0], tracks.shape[1]
    offsets = offset_range(length, frames)
    aligned = min(length, frames)
    cosines = tracks @ query.T  # (N, L, Q)
    if strategy in SCAN_STRATEGIES:
        rows, cols = aligned_pairs(offsets, aligned)
        return OffsetScores(offsets, reduce_pairs(cosines[:, rows, cols], length, strategy), aligned)  # (N, W, n)
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


def aligned_cosines(query: FloatArray, tracks: FloatArray, offsets: IntArray) -> FloatArray:
    """query (Q, D), tracks (N, L, D) -> (N, W, n): the cosine of each pair aligned at each offset (`aligned_pairs`)."""
    rows, cols = aligned_pairs(offsets, min(len(query), tracks.shape[1]))  # (W, n)
    cosines: FloatArray = np.einsum("nwkd,wkd->nwk", tracks[:, rows], query[cols])
    return cosines


def reduce_pairs(pairs: FloatArray, length: int, strategy: Strategy) -> FloatArray:
    """A diagonal strategy's scores (N, W) from the cosines of the n aligned pairs (N, W, n) of a query of `length`
    frames: their sum over `length` (diagonal_mean: the frames outside the track count 0), their maximum, 0
    included when n < length (diagonal_max)."""
    if strategy == "diagonal_mean":
        scores = pairs.sum(axis=-1) / length
    else:
        scores = pairs.max(axis=-1) if pairs.shape[-1] == length else np.maximum(pairs.max(axis=-1), 0.0)
    out: FloatArray = scores.astype(np.float32)
    return out


def frame_cosines(query: FloatArray, track: FloatArray, offset: int) -> FloatArray:
    """Cosine of each aligned (query frame, track frame) pair at `offset`, (n,); query (Q, D), track (L, D)."""
    cosines: FloatArray = aligned_cosines(query, track[None], np.array([offset], dtype=np.int64))[0, 0]
    return cosines


def score_at(query: FloatArray, track: FloatArray, offset: int, strategy: Strategy) -> float:
    """The exact score of query (Q, D) at `offset` of track (L, D) (`score_offsets` there alone)."""
    if strategy not in SCAN_STRATEGIES and len(query) <= len(track):  # the aligned block alone
        return float(score_offsets(query, track[None, offset : offset + len(query)], strategy).scores[0, 0])
    return float(score_offsets(query, track[None], strategy, np.array([offset], dtype=np.int64)).scores[0, 0])


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


def diagonal_reduce(cosines: FloatArray, positions: int, strategy: Strategy) -> FloatArray:
    """cosines (Q, P + Q - 1): query frame j x stored frame -> (P,) over j of cosines[j, p + j] (mean or max)."""
    out = cosines[0, :positions].astype(np.float32, copy=True)
    for j in range(1, len(cosines)):
        diagonal = cosines[j, j : j + positions]
        if strategy == "diagonal_mean":
            out += diagonal
        else:
            np.maximum(out, diagonal, out=out)
    if strategy == "diagonal_mean":
        out /= len(cosines)
    return out


def diagonal_prefix(cosines: FloatArray, width: int) -> FloatArray:
    """cosines (Q, W + Q - 1) -> (Q + 1, W): row i, column d holds sum_{i' < i} cosines[i', d + i'] (the
    first i pairs of diagonal d), so any run of a diagonal sums in one subtraction."""
    length = len(cosines)
    out = np.zeros((length + 1, width), dtype=np.float32)
    for i in range(length):
        np.add(out[i], cosines[i, i : i + width], out=out[i + 1])
    return out


def near_kth(best: FloatArray, k: int) -> IntArray:
    """Indices of the approximate scores `best` (n,) that may be among the exact top k, best first: every
    one within SCAN_TOLERANCE of the k-th best, at least 2k."""
    order = np.argsort(-best, kind="stable")
    if len(order) <= k:
        return order.astype(np.int64)
    floor = best[order[k - 1]] - SCAN_TOLERANCE
    return order[: max(2 * k, int((best >= floor).sum()))].astype(np.int64)


def approximate_products(query: FloatArray, frames: np.ndarray, into: torch.Tensor | None = None) -> FloatArray:
    """query (Q, D) x frames (n, D) -> (Q, n) float32, written into `into` (a (Q, n) float32 view) when given:
    in the frames' own dtype (a float16 GEMM, no conversion pass), except for a query of more than
    CONVERT_ABOVE frames on a CPU without native float16 products: in float32 after converting the frames."""
    half = frames.dtype == np.float16 and not NATIVE_HALF and len(query) > CONVERT_ABOVE
    q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32 if half else frames.dtype))
    stored = as_tensor(frames).float() if half else as_tensor(frames)
    products = q @ stored.T
    if into is None:
        into = products.float()
    else:
        into.copy_(products)  # the float32 conversion, in place
    out: FloatArray = into.numpy()
    return out
