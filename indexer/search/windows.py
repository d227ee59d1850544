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
    as_tensor,
    diagonal_reduce,
    score_offsets,
    spread_frames,
)
from indexer.store.build import CoarseTable
from indexer.store.version import StoreVersion
from model.similarity import Strategy

ROUGH_FRAMES = 64  # query frames (spread over it) a window is scored roughly with, from the coarse table
ROUGH_ABOVE = 8  # query frames above which windows are scored roughly first (a shorter query's: all exactly)
KEPT_PER_HIT = 10  # windows scored exactly per hit asked for, of the roughly scored ones, at least
WIDTH_STEP = 8  # voted windows are a multiple of this many offsets wide
EXACT_FRAMES = 4096  # stored frames the exact stage may read after the rough one (more windows for short queries)
BAND_VALUES = 1 << 23  # float32 values of stored frames converted at a time by the exact band scorer (32 MB)


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
    of nearby bins; the windows' offsets joined, ascending). With `k` (diagonal_mean), a query of more than
    ROUGH_ABOVE frames and a target index with a coarse table (IVF), the windows are first scored roughly
    (`rough_means`) and only the best are scored exactly (KEPT_PER_HIT x k, or as many as EXACT_FRAMES stored
    frames hold), each over its roughly best offset +- radius (a flat index, a small store's: every window
    exactly)."""
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
    shorter = [(t, int(table.length[t]) - length, 0) for t in whole]  # every offset of the tracks within the query
    if k is not None and strategy == "diagonal_mean" and length > ROUGH_ABOVE:
        coarse = version.coarse[target]
        if coarse is not None:  # an IVF index
            kept = max(KEPT_PER_HIT * k, EXACT_FRAMES // (length + 2 * radius))
            windows, shorter = _likely(version, query, coarse, (windows, shorter), kept=kept, radius=radius)
    spans = [(t, low, high - low + length) for t, low, high in windows]
    read = gather_windows(version, target, spans + [(t, 0, int(table.length[t])) for t, _, _ in shorter])
    gathered = WindowFrames(read.frames[: read.at[len(windows)]], read.at[: len(windows) + 1])  # a view
    out = [_shorter_track(w, query, read.part(len(windows) + i), strategy) for i, w in enumerate(shorter)]
    return out + _by_track(windows, window_scores(query, gathered, strategy), length)


def _likely(
    version: StoreVersion,
    query: FloatArray,
    coarse: CoarseTable,
    candidates: tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]],
    *,
    kept: int,
    radius: int,
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """The `kept` best of the (track, low, high) windows and of the tracks no longer than the query (their
    offsets L - Q .. 0) by their rough scores (`rough_means`), each narrowed to its roughly best offset +- radius
    (moved inside the track's offsets: windows of one width are scored in one product, `band_means`)."""
    windows, shorter = candidates
    every = windows + shorter
    rough = rough_means(version, query, coarse, every)
    order = np.argsort(-np.array([r.max() for r in rough]), kind="stable")[:kept].tolist()
    narrowed = []
    for i in order:
        track, low, high = every[i]
        at = low + int(np.argmax(rough[i]))
        first = min(max(low, at - radius), max(low, high - 2 * radius))  # 2 radius + 1 wide where it fits
        narrowed.append((track, first, min(high, first + 2 * radius)))
    ranked = list(zip(order, narrowed, strict=True))
    return sorted(w for i, w in ranked if i < len(windows)), [w for i, w in ranked if i >= len(windows)]


def rough_means(
    version: StoreVersion, query: FloatArray, coarse: CoarseTable, windows: list[tuple[int, int, int]]
) -> list[FloatArray]:
    """Rough diagonal_mean at every offset of each (track, low, high) window (low < 0: the track starts inside
    the query) from the coarse table of the target's index, no token read: (1/R) sum_r <q_r, centroid of the
    track's frame o + r> over ROUGH_FRAMES query frames r spread over it, 0 for frames outside the track."""
    if not windows:
        return []
    picked = spread_frames(len(query), ROUGH_FRAMES)
    table = version.tracks
    counts = np.array([high - low + 1 for _, low, high in windows], dtype=np.int64)
    track = np.repeat(np.array([t for t, _, _ in windows], dtype=np.int64), counts)  # (N,) one per offset
    firsts = np.array([low for _, low, _ in windows], dtype=np.int64) - np.r_[0, np.cumsum(counts)[:-1]]
    place = (np.repeat(firsts, counts) + np.arange(len(track)))[:, None] + picked[None, :]  # (N, R) track frames
    inside = (place >= 0) & (place < table.length[track][:, None])
    ids = table.first_row[track][:, None] * version.frames + np.where(inside, place, 0)
    by_centroid = (torch.from_numpy(query[picked]) @ torch.from_numpy(coarse.centroids).T).numpy()  # (R, C)
    values = by_centroid[np.arange(len(picked))[None, :], coarse.lists[ids]]  # (N, R)
    means = np.where(inside, values, 0.0).sum(1, dtype=np.float32) / len(picked)  # (N,)
    return np.split(means, np.cumsum(counts)[:-1])


def _shorter_track(window: tuple[int, int, int], query: FloatArray, frames: np.ndarray, strategy: Strategy) -> Scored:
    """Exact scores of a track no longer than the query, frames (L, D), at its offsets low .. high of
    L - Q .. 0 (`window`: track, low, high)."""
    track, low, high = window
    offsets = np.arange(low, high + 1, dtype=np.int64)
    found = score_offsets(query, np.asarray(frames, dtype=np.float32)[None], strategy, offsets)
    return Scored(track, found.offsets, found.scores[0], found.aligned)


def _by_track(windows: list[tuple[int, int, int]], scores: list[FloatArray], length: int) -> list[Scored]:
    """Each track's windows and their scores joined into one Scored (offsets ascending, each once)."""
    by_track: dict[int, list[tuple[IntArray, FloatArray]]] = {}
    for (track, low, high), window in zip(windows, scores, strict=True):
        by_track.setdefault(track, []).append((np.arange(low, high + 1, dtype=np.int64), window))
    out = []
    for track, parts in by_track.items():
        offsets, joined = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        offsets, first = np.unique(offsets, return_index=True)  # ascending, each once
        out.append(Scored(track, offsets, joined[first], length))
    return out


def window_scores(query: FloatArray, windows: WindowFrames, strategy: Strategy) -> list[FloatArray]:
    """Exact scores at every offset of each window, the query inside its frames (the diagonal strategies: one
    product for all windows)."""
    if strategy in SCAN_STRATEGIES:
        return diagonal_scores(query, windows, strategy)
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


def gather_windows(version: StoreVersion, target: str, spans: list[tuple[int, int, int]]) -> WindowFrames:
    """The stored frames of each (track, first frame, frames) span, back to back, in one read."""
    table = version.tracks
    firsts = np.array([int(table.first_row[t]) * version.frames + first for t, first, _ in spans], dtype=np.int64)
    sizes = np.array([size for _, _, size in spans], dtype=np.int64)
    at = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    ids = np.repeat(firsts - at[:-1], sizes) + np.arange(at[-1], dtype=np.int64)  # every span's frames
    return WindowFrames(version.frames_at(target, ids), at)


def diagonal_scores(query: FloatArray, windows: WindowFrames, strategy: Strategy) -> list[FloatArray]:
    """Exact scores (float32) at every offset of each window; one product for all windows (diagonal_max), the
    aligned pairs alone (diagonal_mean: `band_means`)."""
    length, frames, at = len(query), windows.frames, windows.at
    if len(frames) == 0:
        return [np.zeros(0, dtype=np.float32) for _ in range(len(at) - 1)]
    if strategy == "diagonal_mean":
        return band_means(query, windows)
    products = query @ np.asarray(frames, dtype=np.float32).T
    cosines = np.pad(products, ((0, 0), (0, length - 1)))  # (Q, n + Q - 1)
    placed = diagonal_reduce(cosines, int(at[-1]), strategy)  # (n,): the query's first frame on frame i
    return [placed[at[i] : at[i + 1] - length + 1] for i in range(len(at) - 1)]


def band_means(query: FloatArray, windows: WindowFrames) -> list[FloatArray]:
    """diagonal_mean at every offset of each window, in float32, from the aligned pairs alone (Q x D products
    per offset, not the Q x (n + Q - 1) of all pairs): windows of one width, a few at a time (converted to
    float32 while they fit the cache), one matrix-vector product per offset o with the Q frames aligned there
    (a view: windows are narrow)."""
    length, dim = len(query), query.shape[1]
    flat_query = torch.from_numpy(np.ascontiguousarray(query).reshape(-1))  # (Q * D,)
    sizes = np.diff(windows.at)
    out: list[FloatArray] = [np.zeros(0, dtype=np.float32)] * len(sizes)
    for size in np.unique(sizes).tolist():
        picked, per_batch = np.flatnonzero(sizes == size), max(1, BAND_VALUES // (size * dim))
        for low in range(0, len(picked), per_batch):
            batch = picked[low : low + per_batch]
            first, last = int(windows.at[batch[0]]), int(windows.at[batch[-1]]) + size
            if last - first == len(batch) * size:  # windows back to back: a slice
                frames = windows.frames[first:last]
            else:
                frames = windows.frames[(windows.at[batch][:, None] + np.arange(size)[None, :]).reshape(-1)]
            block = as_tensor(frames).float().reshape(len(batch), size * dim)  # (b, n * D)
            scores = torch.stack(  # (b, W): the aligned pairs' sum at each offset o, the frames o .. o + Q - 1
                [block[:, o * dim : (o + length) * dim] @ flat_query for o in range(size - length + 1)], 1
            )
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
    return [_widened(low, high, spare) for low, high in merged]


def _widened(low: int, high: int, spare: int) -> tuple[int, int]:
    """[low, high] grown to a multiple of WIDTH_STEP offsets inside 0 .. spare (windows of few widths are scored
    in few products, `band_means`; an offset two windows then share is scored twice, kept once, `_by_track`)."""
    width = -(-(high - low + 1) // WIDTH_STEP) * WIDTH_STEP
    high = min(spare, low + width - 1)
    return max(0, high - width + 1), high
