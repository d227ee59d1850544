"""The scan: a query's diagonal score at every frame offset of every track, for long queries at scale.

Per-frame neighbours cannot rank a long query's candidates: the videos that come 2nd..10th for a 30- or
60-s query are the best partial overlaps of 47 or 94 frames with unrelated videos, decided by every
frame of the placement (BENCHMARKS.md measures votes finding a fifth of them). The scan computes what
the brute force does, fast: blocks of SCAN_FRAMES stored frames times the query, in the store's own
dtype (one float16 GEMM per block, no conversion pass), then for each frame p of the block the sum
(or max) of cos(query frame j, frame p + j) over j. A track of length L >= Q gets its offsets
0..L-Q from its own frames; a track shorter than the query (or one split across shards, which only a
hand-made store has) is left to the exact scorer. The float16 products are approximate (output
rounding <= 2^-11 per cosine), so the scan only nominates: the tracks within SCAN_TOLERANCE of the
k-th best, and more, are rescored exactly on float32 tokens around their best offsets.
"""

from __future__ import annotations

import warnings

import numpy as np
import numpy.typing as npt
import torch

from indexer.sliding import FloatArray, IntArray, pick_moments
from indexer.version import StoreVersion
from model.similarity import Strategy

SCAN_FRAMES = 32_768  # stored frames per GEMM block
SCAN_TOLERANCE = 2e-3  # bounds the float16 products' error on a mean of cosines
SCAN_STRATEGIES: tuple[Strategy, ...] = ("diagonal_mean", "diagonal_max")


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A zero-copy tensor over a (read-only, memory-mapped) array; torch only reads it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


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


def frame_scores(version: StoreVersion, query: FloatArray, target: str, strategy: Strategy) -> FloatArray:
    """(frames,): the score of the query with its first frame on each stored frame (global frame id); the
    positions whose Q frames run past their shard are garbage and must not be read."""
    width, length = version.manifest.dim, len(query)
    out = np.empty(len(version.clip_ids) * version.frames, dtype=np.float32)
    for shard, tokens in enumerate(version.tokens[target]):
        flat = tokens.reshape(-1, width)  # (rows * T, D), a view of the mapped shard
        first = int(version.starts[shard]) * version.frames
        for low in range(0, len(flat), SCAN_FRAMES):
            positions = min(SCAN_FRAMES, len(flat) - low)
            cosines = approximate_products(query, flat[low : low + positions + length - 1])  # (Q, <= P + Q - 1)
            if cosines.shape[1] < positions + length - 1:  # the shard's end: zeros past it
                cosines = np.pad(cosines, ((0, 0), (0, positions + length - 1 - cosines.shape[1])))
            out[first + low : first + low + positions] = diagonal_reduce(cosines, positions, strategy)
    return out


def scannable(version: StoreVersion, tracks: IntArray, length: int) -> npt.NDArray[np.bool_]:
    """Which of `tracks` the scan scores: at least `length` frames, inside one shard."""
    table = version.tracks
    first, last = table.first_row[tracks], table.first_row[tracks] + table.rows[tracks] - 1
    shard_of_first = np.searchsorted(version.starts, first, side="right")
    same_shard = shard_of_first == np.searchsorted(version.starts, last, side="right")
    fits: npt.NDArray[np.bool_] = (table.length[tracks] >= length) & same_shard
    return fits


def nominate(
    version: StoreVersion,
    query: FloatArray,
    target: str,
    tracks: IntArray,
    *,
    strategy: Strategy,
    k: int,
    moments: int,
) -> dict[int, list[int]]:
    """track index -> offsets of its best placements by the scan (up to `moments`, non-overlapping), for
    the scannable `tracks` whose best scanned score is within SCAN_TOLERANCE of the k-th best's (at
    least 2k of them)."""
    scores = frame_scores(version, query, target, strategy)
    table, length = version.tracks, len(query)
    starts = table.first_row[tracks] * version.frames
    spans = table.length[tracks] - length + 1  # offsets 0 .. L - Q
    bounds = np.stack([starts, starts + spans], axis=1).ravel()  # [first, end) of each track's offsets
    padded = np.append(scores, np.float32(-np.inf))  # the last end may be the array's end
    best = np.maximum.reduceat(padded, bounds)[::2] if len(tracks) else np.zeros(0, np.float32)
    picked: dict[int, list[int]] = {}
    for i in near_kth(best, k).tolist():
        offsets = np.arange(spans[i], dtype=np.int64)
        window = scores[starts[i] : starts[i] + spans[i]]
        picked[int(tracks[i])] = [int(offsets[j]) for j in pick_moments(offsets, window, length, moments)]
    return picked


def near_kth(best: FloatArray, k: int) -> IntArray:
    """Indices of the approximate scores `best` (n,) that may be among the exact top k, best first: every
    one within SCAN_TOLERANCE of the k-th best, at least 2k."""
    order = np.argsort(-best, kind="stable")
    if len(order) <= k:
        return order.astype(np.int64)
    floor = best[order[k - 1]] - SCAN_TOLERANCE
    return order[: max(2 * k, int((best >= floor).sum()))].astype(np.int64)


def approximate_products(query: FloatArray, frames: np.ndarray) -> FloatArray:
    """query (Q, D) x frames (n, D) in the frames' own dtype (a float16 GEMM for float16 stores) -> (Q, n)."""
    q = torch.from_numpy(np.ascontiguousarray(query, dtype=frames.dtype))
    products: FloatArray = (q @ as_tensor(frames).T).float().numpy()
    return products


def frames_at(version: StoreVersion, modality: str, frame_ids: IntArray) -> np.ndarray:
    """Stored frames by global id (row * T + frame), (n, D) in the store's dtype."""
    per_row = version.frames
    shard_of = np.searchsorted(version.starts * per_row, frame_ids, side="right") - 1
    out: np.ndarray = np.empty((len(frame_ids), version.manifest.dim), dtype=version.tokens[modality][0].dtype)
    for shard in np.unique(shard_of).tolist():
        picked = shard_of == shard
        flat = version.tokens[modality][shard].reshape(-1, version.manifest.dim)  # (rows * T, D) view
        out[picked] = flat[frame_ids[picked] - int(version.starts[shard]) * per_row]
    return out
