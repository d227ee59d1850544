"""The scan: a query's diagonal score at every frame offset of every track, for long queries at scale.

Per-frame neighbours cannot rank a long query's candidates: the videos that come 2nd..10th for a 30- or
60-s query are the best partial overlaps of 47 or 94 frames with unrelated videos, decided by every
frame of the placement (BENCHMARKS.md measures votes finding a fifth of them). The scan computes what
the brute force does, fast: blocks of SCAN_FRAMES stored frames times the query, in the store's own
dtype (one float16 GEMM per block, no conversion pass; converted to float32 first where that is faster,
`approximate_products`), then along each diagonal of the block's
products (stored frame p + j with query frame j) the sum (diagonal_mean: prefix sums, so any run of a
diagonal is one subtraction) or the max. A track of length L >= Q gets its offsets 0..L-Q from
whole diagonals; a shorter one (diagonal_mean) slides inside the query, offsets L-Q..0, from runs of
L, scored over the query's Q frames as the exact scorer does. Left to the exact scorer: tracks shorter
than the query under diagonal_max, and tracks split across shards (only a hand-made store has them).
The float16 products are approximate (output rounding <= 2^-11 per cosine), so the scan only
nominates: the tracks within SCAN_TOLERANCE of the k-th best, and more, are rescored exactly on float32
tokens around their best offsets.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from indexer.search.sliding import FloatArray, IntArray, pick_moments
from indexer.store.version import StoreVersion
from model.similarity import Strategy

SCAN_FRAMES = 32_768  # stored frames per GEMM block
SCAN_TOLERANCE = 2e-3  # bounds the float16 products' error on a mean of cosines
SCAN_STRATEGIES: tuple[Strategy, ...] = ("diagonal_mean", "diagonal_max")
# float16 GEMMs run natively on CPUs with AVX-512 (AVX512-FP16 / AMX on the Xeons measured); on AVX2-only CPUs
# torch's float16 GEMM costs ~2 ms per query frame per 32k stored frames, converting the block to float32 ~60 ms
# once and then ~0.4 ms per query frame: converting first pays for queries of more than CONVERT_ABOVE frames
NATIVE_HALF = torch.backends.cpu.get_cpu_capability() == "AVX512"
CONVERT_ABOVE = 32  # query frames


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


class ScanScores(NamedTuple):
    placed: FloatArray  # (frames,) score with the query's first frame on each stored frame (tracks >= Q)
    short_best: FloatArray  # (S,) best score of each short track (L < Q) over its offsets L - Q .. 0


def diagonal_prefix(cosines: FloatArray, width: int) -> FloatArray:
    """cosines (Q, W + Q - 1) -> (Q + 1, W): row i, column d holds sum_{i' < i} cosines[i', d + i'] (the
    first i pairs of diagonal d), so any run of a diagonal sums in one subtraction."""
    length = len(cosines)
    out = np.zeros((length + 1, width), dtype=np.float32)
    for i in range(length):
        np.add(out[i], cosines[i, i : i + width], out=out[i + 1])
    return out


def _short_bests(prefix: FloatArray, firsts: IntArray, lengths: IntArray, column0: int) -> FloatArray:
    """Best score over offsets of tracks shorter than the query: track frame j on query frame s + j,
    s = 0 .. Q - L, from the prefix sums whose column c is diagonal (frame c + column0) - query frame; the
    sum of the L aligned cosines over Q (the query's frames outside the track count 0, `indexer.search.sliding`)."""
    length = len(prefix) - 1
    best = np.full(len(firsts), -np.inf, dtype=np.float32)
    for shift in range(length):
        fits = shift <= length - lengths
        if not fits.any():
            break
        column = firsts - shift - column0
        end = np.minimum(shift + lengths, length)
        score = (prefix[end, column] - prefix[shift, column]) / length
        np.maximum(best, np.where(fits, score, -np.inf), out=best)
    return best


def frame_scores(
    version: StoreVersion, query: FloatArray, target: str, strategy: Strategy, short: IntArray
) -> ScanScores:
    """The scan over every shard in blocks of SCAN_FRAMES stored frames (see the module); positions whose
    Q frames run past their shard are garbage and must not be read; `short`: tracks shorter than the
    query, each inside one shard (diagonal_mean only)."""
    width, length, margin = version.manifest.dim, len(query), len(query) - 1
    placed = np.empty(len(version.clip_ids) * version.frames, dtype=np.float32)
    short_best = np.full(len(short), -np.inf, dtype=np.float32)
    short_first = version.tracks.first_row[short] * version.frames  # ascending: store order
    for shard, tokens in enumerate(version.tokens[target]):
        flat = tokens.reshape(-1, width)  # (rows * T, D), a view of the mapped shard
        first = int(version.starts[shard]) * version.frames
        for low in range(0, len(flat), SCAN_FRAMES):
            high = min(low + SCAN_FRAMES, len(flat))
            cosines = _block_products(query, flat, low - margin, high + margin)  # (Q, P + 2M)
            if strategy != "diagonal_mean":
                placed[first + low : first + high] = diagonal_reduce(cosines[:, margin:], high - low, strategy)
                continue
            prefix = diagonal_prefix(cosines, high - low + margin)  # (Q + 1, P + M): diagonals from low - M
            placed[first + low : first + high] = prefix[length, margin:] / length
            inside = slice(*np.searchsorted(short_first, [first + low, first + high]))
            lengths = version.tracks.length[short[inside]]
            short_best[inside] = _short_bests(prefix, short_first[inside] - first, lengths, low - margin)
    return ScanScores(placed, short_best)


def _block_products(query: FloatArray, flat: np.ndarray, low: int, high: int) -> FloatArray:
    """(Q, high - low): the query's products with stored frames low..high-1 of a shard, zeros outside it."""
    out = torch.zeros((len(query), high - low), dtype=torch.float32)
    first, last = max(0, low), min(high, len(flat))
    approximate_products(query, flat[first:last], into=out[:, first - low : last - low])
    products: FloatArray = out.numpy()
    return products


def scannable(version: StoreVersion, tracks: IntArray, length: int, strategy: Strategy) -> npt.NDArray[np.bool_]:
    """Which of `tracks` the scan scores: those inside one shard, of at least `length` frames unless the
    strategy is diagonal_mean (whose prefix sums score shorter tracks too)."""
    table = version.tracks
    first, last = table.first_row[tracks], table.first_row[tracks] + table.rows[tracks] - 1
    shard_of_first = np.searchsorted(version.starts, first, side="right")
    same_shard = shard_of_first == np.searchsorted(version.starts, last, side="right")
    fits: npt.NDArray[np.bool_] = same_shard & ((table.length[tracks] >= length) | (strategy == "diagonal_mean"))
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
    """track index -> offsets of its best placements by the scan (up to `moments`, non-overlapping; a track
    shorter than the query: [0], every offset is rescored), for the scannable `tracks` whose best scanned
    score is within SCAN_TOLERANCE of the k-th best's (at least 2k of them)."""
    table, length = version.tracks, len(query)
    short = table.length[tracks] < length
    scanned = frame_scores(version, query, target, strategy, tracks[short])
    long_tracks = tracks[~short]
    starts = table.first_row[long_tracks] * version.frames
    spans = table.length[long_tracks] - length + 1  # offsets 0 .. L - Q
    bounds = np.stack([starts, starts + spans], axis=1).ravel()  # [first, end) of each track's offsets
    padded = np.append(scanned.placed, np.float32(-np.inf))  # the last end may be the array's end
    best = np.maximum.reduceat(padded, bounds)[::2] if len(long_tracks) else np.zeros(0, np.float32)
    short_tracks, picked = tracks[short], {}
    for i in near_kth(np.concatenate([best, scanned.short_best]), k).tolist():
        if i >= len(long_tracks):
            picked[int(short_tracks[i - len(long_tracks)])] = [0]
            continue
        offsets = np.arange(spans[i], dtype=np.int64)
        window = scanned.placed[starts[i] : starts[i] + spans[i]]
        picked[int(long_tracks[i])] = [int(offsets[j]) for j in pick_moments(offsets, window, length, moments)]
    return picked


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
