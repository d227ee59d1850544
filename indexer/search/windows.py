"""The window stage: exact scores of tracks at windows of offsets around hypotheses (the votes', the scan's),
the windows' stored frames read once (`gather_windows`) and scored in one product (the diagonal strategies) or
by the exact scorer of `indexer.search.sliding`."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from indexer.search.moments import Scored
from indexer.search.sliding import (
    SCAN_STRATEGIES,
    FloatArray,
    IntArray,
    approximate_products,
    as_tensor,
    diagonal_reduce,
    near_kth,
    score_offsets,
)
from indexer.store.version import StoreVersion
from model.similarity import Strategy

BAND_VALUES = 1 << 20  # float32 values of stored frames converted at a time by the exact band scorer (4 MB)


def rescore(
    version: StoreVersion,
    query: FloatArray,
    target: str,
    strategy: Strategy,
    voted: dict[int, list[int]],
    *,
    bin_frames: int,
    radius: int,
    k: int | None = None,
) -> list[Scored]:
    """Exact scores of each voted track over its hypotheses' offsets +- radius frames (one window per run
    of nearby bins; the windows' offsets joined, ascending). With `k`, the windows are first scored in
    the store's dtype and only the tracks that may be in the top k (`near_kth`) are scored exactly."""
    if not voted:
        return []
    table, length = version.tracks, len(query)
    whole = [t for t in voted if length >= int(table.length[t])]  # the whole track fits in the query
    windows = [  # (track, first offset, last offset)
        (t, *w)
        for t, bins in voted.items()
        if length < int(table.length[t])
        for w in _windows(bins, bin_frames=bin_frames, radius=radius, spare=int(table.length[t]) - length)
    ]
    spans = [(t, low, high - low + length) for t, low, high in windows] + [(t, 0, int(table.length[t])) for t in whole]
    read = gather_windows(version, target, spans)  # every frame scored below, read once
    gathered = WindowFrames(read.frames[: read.at[len(windows)]], read.at[: len(windows) + 1])  # a view
    out = [_every_offset(track, query, read.part(len(windows) + i), strategy) for i, track in enumerate(whole)]
    if k is None or strategy not in SCAN_STRATEGIES or not windows:
        return out + _by_track(windows, window_scores(query, gathered, strategy), length)
    rough = _by_track(windows, diagonal_scores(query, gathered, strategy, exact=False), length)
    kept = {rough[i].track for i in near_kth(np.array([s.scores.max() for s in rough]), k).tolist()}
    picked = [i for i, w in enumerate(windows) if w[0] in kept]
    exact = diagonal_scores(query, gathered.subset(picked), strategy, exact=True)
    return out + _by_track([windows[i] for i in picked], exact, length)


def _every_offset(track: int, query: FloatArray, frames: np.ndarray, strategy: Strategy) -> Scored:
    """Exact scores of a track no longer than the query, frames (L, D), at each of its offsets (Q - L + 1)."""
    found = score_offsets(query, np.asarray(frames, dtype=np.float32)[None], strategy)
    return Scored(track, found.offsets, found.scores[0], found.aligned)


def _by_track(windows: list[tuple[int, int, int]], scores: list[FloatArray], length: int) -> list[Scored]:
    """Each track's windows and their scores joined into one Scored (offsets ascending)."""
    by_track: dict[int, list[tuple[IntArray, FloatArray]]] = {}
    for (track, low, high), window in zip(windows, scores, strict=True):
        by_track.setdefault(track, []).append((np.arange(low, high + 1, dtype=np.int64), window))
    out = []
    for track, parts in by_track.items():
        offsets, joined = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        out.append(Scored(track, offsets, joined, length))
    return out


def window_scores(query: FloatArray, windows: WindowFrames, strategy: Strategy) -> list[FloatArray]:
    """Exact scores at every offset of each window, the query inside its frames (the diagonal strategies: one
    product for all windows)."""
    if strategy in SCAN_STRATEGIES:
        return diagonal_scores(query, windows, strategy, exact=True)
    parts = [np.asarray(windows.part(i), dtype=np.float32) for i in range(len(windows.at) - 1)]
    return [score_offsets(query, frames[None], strategy).scores[0] for frames in parts]


class WindowFrames(NamedTuple):
    """The frames of windows of offsets, back to back: window i is frames[at[i] : at[i + 1]], the track
    frames its offsets low..high align with (high - low + Q of them)."""

    frames: np.ndarray  # (n, D) in the store's dtype
    at: IntArray  # (W + 1,)

    def part(self, i: int) -> np.ndarray:
        """Window i's frames, (high - low + Q, D)."""
        return self.frames[self.at[i] : self.at[i + 1]]

    def subset(self, picked: list[int]) -> WindowFrames:
        parts = [self.part(i) for i in picked]
        sizes = [len(part) for part in parts]
        frames = np.concatenate(parts) if parts else self.frames[:0]
        return WindowFrames(frames, np.r_[0, np.cumsum(sizes, dtype=np.int64)].astype(np.int64))


def gather_windows(version: StoreVersion, target: str, spans: list[tuple[int, int, int]]) -> WindowFrames:
    """The stored frames of each (track, first frame, frames) span, back to back, in one read."""
    table = version.tracks
    firsts = np.array([int(table.first_row[t]) * version.frames + first for t, first, _ in spans], dtype=np.int64)
    sizes = np.array([size for _, _, size in spans], dtype=np.int64)
    at = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    ids = np.repeat(firsts - at[:-1], sizes) + np.arange(at[-1], dtype=np.int64)  # every span's frames
    return WindowFrames(version.frames_at(target, ids), at)


def diagonal_scores(query: FloatArray, windows: WindowFrames, strategy: Strategy, *, exact: bool) -> list[FloatArray]:
    """Scores at every offset of each window, in float32 (exact) or in the store's dtype (not exact: a
    float16 store's rounding); one product for all windows."""
    length, frames, at = len(query), windows.frames, windows.at
    if len(frames) == 0:
        return [np.zeros(0, dtype=np.float32) for _ in range(len(at) - 1)]
    if exact and strategy == "diagonal_mean":
        return band_means(query, windows)
    products = query @ np.asarray(frames, dtype=np.float32).T if exact else approximate_products(query, frames)
    cosines = np.pad(products, ((0, 0), (0, length - 1)))  # (Q, n + Q - 1)
    placed = diagonal_reduce(cosines, int(at[-1]), strategy)  # (n,): the query's first frame on frame i
    return [placed[at[i] : at[i + 1] - length + 1] for i in range(len(at) - 1)]


def band_means(query: FloatArray, windows: WindowFrames) -> list[FloatArray]:
    """diagonal_mean at every offset of each window, in float32, from the aligned pairs alone (Q x D products
    per offset, not the Q x (n + Q - 1) of all pairs): windows of one width in one matrix-vector product per
    offset, a few at a time (converted to float32 while they fit the cache)."""
    length, dim = len(query), query.shape[1]
    flat_query = torch.from_numpy(np.ascontiguousarray(query).reshape(-1))  # (Q * D,)
    sizes = np.diff(windows.at)
    out: list[FloatArray] = [np.zeros(0, dtype=np.float32)] * len(sizes)
    stored = as_tensor(windows.frames)
    for size in np.unique(sizes).tolist():
        picked, per_batch = np.flatnonzero(sizes == size), max(1, BAND_VALUES // (size * dim))
        for low in range(0, len(picked), per_batch):
            batch = picked[low : low + per_batch]
            rows = torch.from_numpy(windows.at[batch][:, None] + np.arange(size)[None, :])
            block = stored[rows.reshape(-1)].float().reshape(len(batch), size, dim)  # (b, n, D)
            scores = torch.stack(
                [block[:, s : s + length].reshape(len(batch), -1) @ flat_query for s in range(size - length + 1)], 1
            )  # (b, n - Q + 1)
            for i, row in zip(batch.tolist(), (scores / length).numpy(), strict=True):
                out[i] = row
    return out


def _windows(bins: list[int], *, bin_frames: int, radius: int, spare: int) -> list[tuple[int, int]]:
    """Offset ranges [low, high] covering each bin +- radius inside 0 .. spare, overlapping ones merged."""
    merged: list[tuple[int, int]] = []
    for b in bins:
        low, high = max(0, b * bin_frames - radius), min(spare, (b + 1) * bin_frames - 1 + radius)
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged
