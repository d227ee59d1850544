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
than the query under diagonal_max, and tracks split across segments (only a hand-made store has them).
The float16 products are approximate (output rounding <= 2^-11 per cosine), so the scan only
nominates (`scan_candidates`): the tracks within SCAN_TOLERANCE of the k-th best, and more, are rescored exactly on
float32 tokens around their best offsets (`indexer.search.windows`), the tracks it leaves out exhaustively.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from indexer.search.sliding import (
    SCAN_STRATEGIES,
    FloatArray,
    IntArray,
    approximate_products,
    diagonal_prefix,
    diagonal_reduce,
    near_kth,
    pick_moments,
)
from indexer.store.version import StoreVersion
from model.similarity import Strategy

SCAN_FRAMES = 32_768  # stored frames per GEMM block


class ScanCandidates(NamedTuple):
    """What the scan leaves to the exact stages."""

    voted: dict[int, list[int]]  # track index -> offset bins (ascending) around its nominated placements
    left: IntArray  # (n,) tracks the scan cannot score (see the module): scored exhaustively


def scan_candidates(
    version: StoreVersion,
    query: FloatArray,
    target: str,
    strategy: Strategy,
    tracks: IntArray,
    *,
    k: int,
    moments: int,
    bin_frames: int,
) -> ScanCandidates:
    """The scan of the searchable `tracks`: its nominees' offset bins (pooled in bins of `bin_frames`), and the
    tracks it leaves out (split across segments; shorter than the query under diagonal_max)."""
    if strategy not in SCAN_STRATEGIES:
        raise ValueError(f"the scan scores {SCAN_STRATEGIES}, not {strategy!r}; use the votes")
    fits = scannable(version, tracks, len(query), strategy)
    nominees = nominate(version, query, target, tracks[fits], strategy=strategy, k=k, moments=moments)
    voted = {t: sorted({o // bin_frames for o in offsets}) for t, offsets in nominees.items()}
    return ScanCandidates(voted, tracks[~fits])


class ScanScores(NamedTuple):
    placed: FloatArray  # (frames,) score with the query's first frame on each stored frame (tracks >= Q)
    short_best: FloatArray  # (S,) best score of each short track (L < Q) over its offsets L - Q .. 0


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
    """The scan over every segment in blocks of SCAN_FRAMES stored frames (see the module); positions whose
    Q frames run past their segment are garbage and must not be read; `short`: tracks shorter than the
    query, each inside one segment (diagonal_mean only)."""
    width, length, margin = version.manifest.dim, len(query), len(query) - 1
    placed = np.empty(len(version.clip_ids) * version.frames, dtype=np.float32)
    short_best = np.full(len(short), -np.inf, dtype=np.float32)
    short_first = version.tracks.first_row[short] * version.frames  # ascending: store order
    for segment, tokens in enumerate(version.tokens[target]):
        flat = tokens.reshape(-1, width)  # (rows * T, D), a view of the mapped segment
        first = int(version.segment_starts[segment]) * version.frames
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
    """(Q, high - low): the query's products with stored frames low..high-1 of a segment, zeros outside it."""
    out = torch.zeros((len(query), high - low), dtype=torch.float32)
    first, last = max(0, low), min(high, len(flat))
    approximate_products(query, flat[first:last], into=out[:, first - low : last - low])
    products: FloatArray = out.numpy()
    return products


def scannable(version: StoreVersion, tracks: IntArray, length: int, strategy: Strategy) -> npt.NDArray[np.bool_]:
    """Which of `tracks` the scan scores: those inside one segment, of at least `length` frames unless the
    strategy is diagonal_mean (whose prefix sums score shorter tracks too)."""
    table = version.tracks
    first, last = table.first_row[tracks], table.first_row[tracks] + table.rows[tracks] - 1
    segment_of_first = np.searchsorted(version.segment_starts, first, side="right")
    same_segment = segment_of_first == np.searchsorted(version.segment_starts, last, side="right")
    fits: npt.NDArray[np.bool_] = same_segment & ((table.length[tracks] >= length) | (strategy == "diagonal_mean"))
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
