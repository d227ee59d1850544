"""The window stage: exact scores of tracks at windows of offsets around hypotheses (the votes', the scan's),
the windows' stored frames read once (`gather_windows`) and scored as bands of block matrix products
(`band_means`: diagonal_mean), in one product (diagonal_max) or by the exact scorer of `indexer.search.sliding`;
a long query's windows ranked roughly first, from the coarse table of the index (`rough_means`, `_likely`)."""

from __future__ import annotations

import threading
from itertools import chain
from typing import NamedTuple

import numpy as np
import torch

from indexer.search.moments import Scored
from indexer.search.sliding import (
    SCAN_STRATEGIES,
    FloatArray,
    IntArray,
    diagonal_reduce,
    score_offsets,
    spread_frames,
)
from indexer.store.build import CoarseTable
from indexer.store.version import StoreVersion, as_tensor
from model.similarity import Strategy

ROUGH_FRAMES = 64  # query frames (spread over it) a window is scored roughly with, from the coarse table
ROUGH_STRIDE = 2  # offsets scored roughly: every 2nd (a window's rough score, its best of them, only ranks it)
ROUGH_ABOVE = 8  # query frames above which windows are scored roughly first (a shorter query's: all exactly)
KEPT_PER_HIT = 10  # windows scored exactly per hit asked for, of the roughly scored ones, at least
WIDTH_STEP = 4  # voted windows are a multiple of this many offsets wide
EXACT_FRAMES = 4096  # stored frames the exact stage may read after the rough one (more windows for short queries)
BAND_VALUES = 1 << 22  # float32 values of stored frames converted at a time by the exact band scorer (16 MB)
BAND_BLOCK = 16  # query frames the band scorer multiplies at a time


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
    lead: dict[int, int] | None = None,
) -> list[Scored]:
    """Exact scores of each voted track over its hypotheses' offsets +- radius frames (one window per run of nearby
    bins, a track no longer than the query at every offset; the windows' offsets joined, ascending). With `k`
    (diagonal_mean), a query of more than ROUGH_ABOVE frames and a target index with a coarse table (IVF), every
    bin's window (tracks no longer than the query too) is first scored roughly (`rough_means`) and one window per
    run of a track's bins is scored exactly, of the runs scoring best roughly (`_likely`: KEPT_PER_HIT x k, or as
    many as EXACT_FRAMES stored frames hold), the window of the track's best-voted bin (`lead`) where the run holds
    it. A flat index (a small store's): every window exactly."""
    if not voted:
        return []
    table, length = version.tracks, len(query)
    spare = {t: int(table.length[t]) - length for t in voted}  # offsets run from min(0, spare) to max(0, spare)
    coarse = version.coarse[target]
    if k is not None and strategy == "diagonal_mean" and length > ROUGH_ABOVE and coarse is not None:
        every = voted_windows(voted, spare, bin_frames=bin_frames, radius=radius, merge=False)
        leads = lead or {}
        preferred = np.fromiter((b == leads.get(t) for t, bins in voted.items() for b in bins), bool, len(every))
        kept = max(KEPT_PER_HIT * k, EXACT_FRAMES // (length + 2 * radius))
        likely = _likely(version, query, coarse, every, kept=kept, preferred=preferred)
        windows = [(t, *_widened(low, high, spare[t])) for t, low, high in likely if spare[t] > 0]
        shorter = [w for w in likely if spare[w[0]] <= 0]
    else:
        inside = {t: bins for t, bins in voted.items() if spare[t] > 0}
        windows = voted_windows(inside, spare, bin_frames=bin_frames, radius=radius, merge=True)
        shorter = [(t, spare[t], 0) for t in voted if spare[t] <= 0]  # every offset of the tracks within the query
    windows.sort(key=lambda w: w[2] - w[1])  # windows of one width back to back: scored from slices (`band_means`)
    spans = [(t, low, high - low + length) for t, low, high in windows]
    read = gather_windows(version, target, spans + [(t, 0, int(table.length[t])) for t, _, _ in shorter])
    gathered = WindowFrames(read.frames[: read.at[len(windows)]], read.at[: len(windows) + 1])  # a view
    scores = window_scores(query, gathered, strategy)
    scores += [_shorter_scores(w, query, read.part(len(windows) + i), strategy) for i, w in enumerate(shorter)]
    aligned = [length] * len(windows) + [int(table.length[t]) for t, _, _ in shorter]
    return _by_track(windows + shorter, scores, aligned)


def _likely(
    version: StoreVersion,
    query: FloatArray,
    coarse: CoarseTable,
    windows: list[tuple[int, int, int]],
    *,
    kept: int,
    preferred: np.ndarray,
) -> list[tuple[int, int, int]]:
    """Of the (track, low, high) windows (one per voted bin, ascending per track), one per run of a track's
    overlapping ones, the `kept` runs scoring best roughly (`rough_means`; sorted): the run's `preferred` window
    (its track's best-voted bin: the votes place a match better than the coarse table) or its roughly best. The
    exact stage scores as many placements as it keeps, not one placement's neighbouring bins."""
    track, low, high = columns(windows)
    rough = _rough_offsets(version, query, coarse, (track, low, high), ROUGH_STRIDE)
    best = np.maximum.reduceat(rough.means, rough.starts)  # (W,) each window's roughly best offset's
    run = np.cumsum(np.r_[True, (track[1:] != track[:-1]) | (low[1:] > high[:-1] + 1)]) - 1  # (W,)
    firsts = np.flatnonzero(np.r_[True, run[1:] != run[:-1]])  # (runs,) each run's first window
    by_run = np.lexsort((-best, ~preferred, run))  # each run's windows: preferred, then roughly best, first
    leads = by_run[np.r_[True, run[by_run][1:] != run[by_run][:-1]]]  # (runs,) the window kept of each run
    chosen = leads[np.argsort(-np.maximum.reduceat(best, firsts), kind="stable")[:kept]]
    return sorted(windows[i] for i in chosen.tolist())


def rough_means(
    version: StoreVersion,
    query: FloatArray,
    coarse: CoarseTable,
    windows: list[tuple[int, int, int]],
    stride: int = 1,
) -> list[FloatArray]:
    """Rough diagonal_mean at the offsets low, low + stride, .. <= high of each (track, low, high) window (low < 0:
    the track starts inside the query) from the coarse table of the target's index, no token read: (1/R) sum_r
    <q_r, centroid of the track's frame o + r> over ROUGH_FRAMES query frames r spread over it, 0 for frames
    outside the track."""
    if not windows:
        return []
    found = _rough_offsets(version, query, coarse, columns(windows), stride)
    return np.split(found.means, found.starts[1:])


def columns(windows: list[tuple[int, int, int]]) -> tuple[IntArray, IntArray, IntArray]:
    """(track, low, high) windows as three (W,) arrays."""
    track, low, high = (np.array(column, dtype=np.int64) for column in zip(*windows, strict=True))
    return track, low, high


class RoughScores(NamedTuple):
    """`rough_means` back to back: window i's are means[starts[i] : starts[i + 1]]."""

    means: FloatArray  # (N,) one per scored offset
    starts: IntArray  # (W,) where each window's offsets start


def _rough_offsets(
    version: StoreVersion,
    query: FloatArray,
    coarse: CoarseTable,
    windows: tuple[IntArray, IntArray, IntArray],
    stride: int,
) -> RoughScores:
    """`rough_means` of every window (`columns`) in one pass: one lookup per (offset, query frame) in a table of the
    picked query frames' products with the centroids, a column of zeros for the frames outside the track."""
    picked = spread_frames(len(query), ROUGH_FRAMES)
    table, lists = version.tracks, len(coarse.centroids)
    track, low, high = windows
    counts = (high - low) // stride + 1
    starts = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)
    owner = np.repeat(np.arange(len(track)), counts)  # (N,) the window of each scored offset
    offset = low[owner] + stride * (np.arange(len(owner)) - starts[owner])  # (N,)
    place = offset[:, None] + picked[None, :]  # (N, R) track frames
    inside = (place >= 0) & (place < table.length[track][owner][:, None])
    ids = (table.first_row[track] * version.frames)[owner][:, None] + np.where(inside, place, 0)
    by_centroid = np.zeros((len(picked), lists + 1), dtype=np.float32)  # (R, C + 1): column C is outside
    by_centroid[:, :lists] = (torch.from_numpy(query[picked]) @ torch.from_numpy(coarse.centroids).T).numpy()
    cells = np.where(inside, coarse.lists[ids], lists).astype(np.int64)  # (N, R)
    cells += (np.arange(len(picked), dtype=np.int64) * (lists + 1))[None, :]
    means = by_centroid.ravel()[cells].sum(1, dtype=np.float32) / np.float32(len(picked))
    return RoughScores(means, starts)


def _shorter_scores(
    window: tuple[int, int, int], query: FloatArray, frames: np.ndarray, strategy: Strategy
) -> FloatArray:
    """Exact scores of a track no longer than the query, frames (L, D), at its offsets low .. high of L - Q .. 0
    (`window`: track, low, high); diagonal_mean from the band of the track zero-padded to the query's frames
    (`band_products`: the frames that query frame j meets at offset o are track frame o + j, zero outside)."""
    _, low, high = window
    if strategy != "diagonal_mean":
        offsets = np.arange(low, high + 1, dtype=np.int64)
        found = score_offsets(query, np.asarray(frames, dtype=np.float32)[None], strategy, offsets)
        scores: FloatArray = found.scores[0]
        return scores
    met = np.arange(low, high + len(query))  # (W + Q - 1,) track frame met at each step, outside it: zero
    inside = (met >= 0) & (met < len(frames))
    band = torch.zeros((len(met), query.shape[1]), dtype=torch.float32)
    band[torch.from_numpy(inside)] = as_tensor(np.asarray(frames[met[inside]])).float()
    out: FloatArray = (band_products(band[None], torch.from_numpy(query))[0] / len(query)).numpy()
    return out


def _by_track(windows: list[tuple[int, int, int]], scores: list[FloatArray], aligned: list[int]) -> list[Scored]:
    """Each track's windows and their scores joined into one Scored (offsets ascending, each once); `aligned`: the
    frame pairs aligned at every offset of each window's track."""
    if not windows:
        return []
    track, low, high = columns(windows)
    sizes = high - low + 1
    owner = np.repeat(np.arange(len(windows)), sizes)  # (N,) the window of each scored offset
    offsets = low[owner] + np.arange(len(owner)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    order = np.lexsort((offsets, track[owner]))  # by track, then offset (stable: a window's first score kept)
    tracks, offsets = track[owner][order], offsets[order]
    first = np.r_[True, (tracks[1:] != tracks[:-1]) | (offsets[1:] != offsets[:-1])]  # each offset once
    joined, tracks, offsets = np.concatenate(scores)[order][first], tracks[first], offsets[first]
    bounds = np.flatnonzero(np.r_[True, tracks[1:] != tracks[:-1], True])
    pairs = dict(zip(track.tolist(), aligned, strict=True))
    return [
        Scored(int(tracks[a]), offsets[a:b], joined[a:b], pairs[int(tracks[a])])
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
    ]


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
    """diagonal_mean at every offset of each window, in float32, from the aligned pairs alone: windows of one width
    a batch at a time, converted to float32 into this thread's buffer (`_SCRATCH`: reused, no fresh pages per
    search) and scored by `band_products`."""
    length, dim = len(query), query.shape[1]
    query_t = torch.from_numpy(np.ascontiguousarray(query))
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
            block = _SCRATCH.single(len(batch) * size * dim).view(len(batch), size, dim)  # (b, n, D)
            block.copy_(as_tensor(frames).view(len(batch), size, dim))
            scores = band_products(block, query_t) / length  # (b, W)
            for i, row in zip(batch.tolist(), scores.numpy(), strict=True):
                out[i] = row
    return out


def band_products(frames: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """frames (b, W + Q - 1, D), query (Q, D) -> (b, W): sum_j <frames[:, o + j], query[j]> at each offset o, from
    the products of BAND_BLOCK query frames at a time with the W + BAND_BLOCK - 1 frames they meet (matrix products,
    ~(W + BAND_BLOCK - 1) / W of the aligned pairs' work), their diagonals summed."""
    count, size, _ = frames.shape
    width = size - len(query) + 1
    out = torch.zeros(count, width)
    for first in range(0, len(query), BAND_BLOCK):
        part = query[first : first + BAND_BLOCK]  # (B, D)
        met = len(part) + width - 1
        products = torch.matmul(frames[:, first : first + met], part.T).contiguous()  # (b, W + B - 1, B)
        blocks = len(part)  # the diagonal o of the block: products[:, o + j, j], j < B
        out += products.as_strided((count, width, blocks), (met * blocks, blocks, blocks + 1)).sum(2)
    return out


class _Scratch(threading.local):
    """This thread's float32 buffer for the exact stage, grown as needed and kept: a search converting tens of MB
    of frames into fresh memory pays more for the pages than for the products (BENCHMARKS.md, issue 30)."""

    def __init__(self) -> None:
        self.buffer = torch.empty(0, dtype=torch.float32)

    def single(self, count: int) -> torch.Tensor:
        """A float32 tensor of `count` values (its contents undefined), a view of the kept buffer."""
        if self.buffer.numel() < count:
            self.buffer = torch.empty(count, dtype=torch.float32)
        return self.buffer[:count]


_SCRATCH = _Scratch()


def voted_windows(
    voted: dict[int, list[int]], spare: dict[int, int], *, bin_frames: int, radius: int, merge: bool
) -> list[tuple[int, int, int]]:
    """(track, low, high) offset ranges covering each voted bin (ascending per track) +- radius inside 0 .. spare
    (spare .. 0 for a track shorter than the query): with `merge`, a track's overlapping ones merged and widened
    (`_widened`: windows scored exactly as they are); else one per bin (windows scored roughly first: each bin
    ranked on its own, none hidden by a neighbour)."""
    if not voted:
        return []
    counts = [len(bins) for bins in voted.values()]
    track = np.repeat(np.fromiter(voted, dtype=np.int64, count=len(voted)), counts)
    bins = np.fromiter(chain.from_iterable(voted.values()), dtype=np.int64, count=sum(counts))
    spares = np.repeat(np.array([spare[t] for t in voted], dtype=np.int64), counts)
    first, last = np.minimum(0, spares), np.maximum(0, spares)
    low = np.maximum(first, bins * bin_frames - radius)
    high = np.minimum(last, (bins + 1) * bin_frames - 1 + radius)  # both ascending per track
    if merge:
        starts = np.flatnonzero(np.r_[True, (track[1:] != track[:-1]) | (low[1:] > high[:-1] + 1)])
        track, low, high = track[starts], low[starts], np.maximum.reduceat(high, starts)
        width = -(-(high - low + 1) // WIDTH_STEP) * WIDTH_STEP  # widened: see `_widened`
        high = np.minimum(last[starts], low + width - 1)
        low = np.maximum(first[starts], high - width + 1)
    return list(zip(track.tolist(), low.tolist(), high.tolist(), strict=True))


def _widened(low: int, high: int, spare: int) -> tuple[int, int]:
    """[low, high] grown to a multiple of WIDTH_STEP offsets inside 0 .. spare (windows of few widths are scored
    in few products, `band_means`; an offset two windows then share is scored twice, kept once, `_by_track`)."""
    width = -(-(high - low + 1) // WIDTH_STEP) * WIDTH_STEP
    high = min(spare, low + width - 1)
    return max(0, high - width + 1), high
