"""The retrieval core: query tokens (Q, D) -> the top-k tracks (videos) of a store version, each with
its best moments. Arrays in, dataclasses out; the catalog is looked up a layer above.

A video is one track of per-frame tokens per modality (`indexer.store.tracks`). A query of any length is
scored at every frame offset of a track by the exact strategy of `indexer.search.sliding` (diagonal_mean:
(1/Q) sum of the cosines of the aligned frame pairs). Which tracks and offsets get scored:
- "exhaustive" (automatic up to EXHAUSTIVE_BELOW live frames): every offset of every live track;
- "votes" (automatic for queries of up to SCAN_ABOVE frames): each query frame's `per_frame` nearest
  frames in the FAISS index vote, with their cosine, for the (track, offset) hypothesis they imply
  (offset = frame's place in its track - query frame), offsets pooled in bins of `bin_frames`; the
  `hypotheses` best-voted bins are scored exactly over their offsets +- `radius` frames (the Shazam /
  audfprint offset histogram, on our exact score). The defaults (2048 : 1024) are the cheapest that
  reach recall@10 0.99 against the exact search at 100k clip-equivalents (BENCHMARKS.md);
- "scan" (automatic for longer queries; diagonal strategies): `indexer.search.scan` scores every offset of
  every track in float16 products and nominates the tracks near the k-th best, which are then scored
  exactly around their best offsets. A long query's 2nd..10th videos are partial overlaps that no
  frame's neighbours point at; the scan finds them (recall@10 1.0 at 30 and 60 s).
Each scored track gives up to `moments` non-overlapping moments and is ranked by its best moment's score
(`indexer.search.moments`: where moments are placed, how they are ordered).
Deleted videos never come back: their rows are dead in the version.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import torch

from indexer.search.moments import MomentRule, Scored, TrackHit, ranked_hits
from indexer.search.scan import (
    SCAN_STRATEGIES,
    approximate_products,
    as_tensor,
    diagonal_reduce,
    frames_at,
    near_kth,
    nominate,
    scannable,
)
from indexer.search.sliding import FloatArray, IntArray, score_offsets
from indexer.store.version import StoreVersion
from model.network import Modality
from model.similarity import STRATEGIES, Strategy

Scheme = Literal["auto", "exhaustive", "votes", "scan"]
SCHEMES: tuple[Scheme, ...] = ("auto", "exhaustive", "votes", "scan")
EXHAUSTIVE_BELOW = 32_000  # live frames (2,000 clip-equivalents) up to which every offset is scored
SCAN_ABOVE = 16  # query frames (one clip) above which "auto" scans rather than votes
BAND_VALUES = 1 << 20  # float32 values of stored frames converted at a time by the exact band scorer (4 MB)


def searchable_tracks(version: StoreVersion, modality: str) -> IntArray:
    """Indices of the live tracks that have `modality`."""
    table = version.tracks
    return np.flatnonzero(table.live & version.present[modality][table.first_row]).astype(np.int64)


def exhaustive(
    version: StoreVersion, query: FloatArray, target: str, strategy: Strategy, tracks: IntArray | None = None
) -> list[Scored]:
    """Every offset of every live track (or of `tracks`), tracks of one length scored in one batch."""
    table, out = version.tracks, []
    tracks = searchable_tracks(version, target) if tracks is None else tracks
    for length in np.unique(table.length[tracks]):
        group = tracks[table.length[tracks] == length]
        rows = np.concatenate([table.row_range(int(t)) for t in group])
        tokens = version.gather(target, rows).reshape(len(group), -1, version.manifest.dim)  # (n, rows*T, D)
        found = score_offsets(query, tokens[:, : int(length)], strategy)
        out += [Scored(int(t), found.offsets, found.scores[i], found.aligned) for i, t in enumerate(group)]
    return out


def vote(
    version: StoreVersion, query: FloatArray, target: str, *, per_frame: int, hypotheses: int, bin_frames: int
) -> dict[int, list[int]]:
    """track index -> the offset bins (ascending) of its hypotheses among the `hypotheses` best-voted."""
    index = version.index[target]
    sims, ids = index.search(query, min(per_frame, index.ntotal))  # (Q, k)
    starts = np.arange(len(query), dtype=np.int64)
    return tally(
        version, target, len(query), Neighbours(sims, ids, starts), hypotheses=hypotheses, bin_frames=bin_frames
    )


class Neighbours(NamedTuple):
    """Stored frames (or windows of frames) found for parts of a query, as a FAISS search returns them."""

    sims: FloatArray  # (P, k) inner products
    ids: IntArray  # (P, k) FAISS ids (row * T + frame of the stored part's first frame), -1: none
    starts: IntArray  # (P,) query frame where each probing part starts


def tally(
    version: StoreVersion, target: str, length: int, found: Neighbours, *, hypotheses: int, bin_frames: int
) -> dict[int, list[int]]:
    """The votes of `found` for a query of `length` frames: each neighbour votes, with its inner product, for
    the (track, offset bin) it implies (offset = its place in its track - its probe's start); track index ->
    the offset bins (ascending) among the `hypotheses` best-voted."""
    table, ids = version.tracks, found.ids
    hit = ids >= 0
    track, place = table.place(np.where(hit, ids, 0))
    alive = table.live[track] & version.present[target][table.first_row[track]] & (place < table.length[track])
    offsets = place - found.starts[:, None]
    spare = table.length[track] - length  # offsets run from min(0, spare) to max(0, spare)
    keep = hit & alive & (offsets >= np.minimum(0, spare)) & (offsets <= np.maximum(0, spare))
    bins = np.floor_divide(offsets, bin_frames)[keep]
    keys = track[keep] * (1 << 32) + (bins + (1 << 31))
    unique, inverse = np.unique(keys, return_inverse=True)
    votes = np.bincount(inverse, weights=found.sims[keep].astype(np.float64))
    best = np.sort(unique[np.argsort(-votes, kind="stable")[:hypotheses]])  # by track, then bin
    voted: dict[int, list[int]] = {}
    for key in best.tolist():
        voted.setdefault(key >> 32, []).append((key & 0xFFFFFFFF) - (1 << 31))
    return voted


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
    table, length, out = version.tracks, len(query), []
    windows: list[tuple[int, int, int]] = []  # (track, first offset, last offset)
    for track, bins in voted.items():
        frames = int(table.length[track])
        if length >= frames:  # the whole track fits in the query: every offset (at most Q - L + 1)
            found = score_offsets(query, version.track_frames(target, track)[None], strategy)
            out.append(Scored(track, found.offsets, found.scores[0], found.aligned))
            continue
        spare = frames - length
        windows += [(track, *w) for w in _windows(bins, bin_frames=bin_frames, radius=radius, spare=spare)]
    if k is None or strategy not in SCAN_STRATEGIES or not windows:
        return out + _by_track(windows, window_scores(version, query, target, strategy, windows), length)
    gathered = gather_windows(version, target, windows, length)  # read once, scored twice
    rough = _by_track(windows, diagonal_scores(query, gathered, strategy, exact=False), length)
    kept = {rough[i].track for i in near_kth(np.array([s.scores.max() for s in rough]), k).tolist()}
    picked = [i for i, w in enumerate(windows) if w[0] in kept]
    exact = diagonal_scores(query, gathered.subset(picked), strategy, exact=True)
    return out + _by_track([windows[i] for i in picked], exact, length)


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


def window_scores(
    version: StoreVersion, query: FloatArray, target: str, strategy: Strategy, windows: list[tuple[int, int, int]]
) -> list[FloatArray]:
    """Exact scores at offsets low..high of each (track, low, high) window, query inside the track (the
    diagonal strategies: the windows' frames gathered once and multiplied in one product)."""
    length = len(query)
    if not windows:
        return []
    if strategy not in SCAN_STRATEGIES:
        return [
            score_offsets(query, version.track_frames(target, t, low, high + length)[None], strategy).scores[0]
            for t, low, high in windows
        ]
    return diagonal_scores(query, gather_windows(version, target, windows, length), strategy, exact=True)


class WindowFrames(NamedTuple):
    """The frames of windows of offsets, back to back: window i is frames[at[i] : at[i + 1]], the track
    frames its offsets low..high align with (high - low + Q of them)."""

    frames: np.ndarray  # (n, D) in the store's dtype
    at: IntArray  # (W + 1,)

    def subset(self, picked: list[int]) -> WindowFrames:
        parts = [self.frames[self.at[i] : self.at[i + 1]] for i in picked]
        sizes = [len(part) for part in parts]
        frames = np.concatenate(parts) if parts else self.frames[:0]
        return WindowFrames(frames, np.r_[0, np.cumsum(sizes, dtype=np.int64)].astype(np.int64))


def gather_windows(
    version: StoreVersion, target: str, windows: list[tuple[int, int, int]], length: int
) -> WindowFrames:
    """The stored frames of each (track, low, high) window of a query of `length` frames, in one read."""
    table = version.tracks
    firsts = np.array([int(table.first_row[t]) * version.frames + low for t, low, _ in windows], dtype=np.int64)
    sizes = np.array([high - low + length for _, low, high in windows], dtype=np.int64)
    at = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    ids = np.repeat(firsts - at[:-1], sizes) + np.arange(at[-1], dtype=np.int64)  # every window's frames
    return WindowFrames(frames_at(version, target, ids), at)


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


def search(
    version: StoreVersion,
    query: np.ndarray,
    *,
    target: Modality,
    k: int = 10,
    strategy: Strategy = "diagonal_mean",
    scheme: Scheme = "auto",
    moments: int = 3,
    moment_from: Modality | None = None,
    per_frame: int = 2048,
    hypotheses: int = 1024,
    bin_frames: int = 4,
    radius: int = 4,
) -> list[TrackHit]:
    """Top-k tracks of the `target` modality for L2-normalised query tokens (Q, D), best first.

    `moment_from`: the query's own modality; when given, each hit's moments are the query's best
    placements on the track of that modality (an audio excerpt on the video's soundtrack: where it
    sounds like the excerpt), those that match as well as the best kept; else the target's best
    offsets. Moments are sorted by their score against the target; a hit's score is its first moment's
    (`indexer.search.moments`).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown candidate scheme {scheme!r}; choose one of {SCHEMES}")
    if query.ndim != 2 or query.shape[1] != version.manifest.dim or len(query) == 0:
        raise ValueError(f"query tokens must be (Q >= 1, {version.manifest.dim}), got {tuple(query.shape)}")
    q = np.ascontiguousarray(query, dtype=np.float32)
    tracks = searchable_tracks(version, target)
    if scheme == "auto":
        scheme = _automatic(int(version.tracks.length[tracks].sum()), len(q), strategy)
    if scheme == "exhaustive":
        scored = exhaustive(version, q, target, strategy, tracks)
    elif scheme == "scan":
        scored = scan(version, q, target, strategy, tracks, k=k, moments=moments, bin_frames=bin_frames, radius=radius)
    else:
        voted = vote(version, q, target, per_frame=per_frame, hypotheses=hypotheses, bin_frames=bin_frames)
        scored = rescore(version, q, target, strategy, voted, bin_frames=bin_frames, radius=radius, k=k)
    if not scored:
        return []
    rule = MomentRule(target, strategy, moments, moment_from)
    return ranked_hits(version, q, scored, k, rule)


def _automatic(live_frames: int, query_frames: int, strategy: Strategy) -> Scheme:
    """Small stores: exhaustive; queries longer than a clip: the scan; else the votes."""
    if live_frames <= EXHAUSTIVE_BELOW:
        return "exhaustive"
    return "scan" if query_frames > SCAN_ABOVE and strategy in SCAN_STRATEGIES else "votes"


def scan(
    version: StoreVersion,
    query: FloatArray,
    target: str,
    strategy: Strategy,
    tracks: IntArray,
    *,
    k: int,
    moments: int,
    bin_frames: int,
    radius: int,
) -> list[Scored]:
    """The scan of the searchable `tracks`: its nominees rescored exactly around their best placements,
    and the tracks it leaves out (split across shards; shorter than the query under diagonal_max)
    scored exhaustively."""
    if strategy not in SCAN_STRATEGIES:
        raise ValueError(f"the scan scores {SCAN_STRATEGIES}, not {strategy!r}; use the votes")
    fits = scannable(version, tracks, len(query), strategy)
    nominees = nominate(version, query, target, tracks[fits], strategy=strategy, k=k, moments=moments)
    voted = {t: sorted({o // bin_frames for o in offsets}) for t, offsets in nominees.items()}
    found = rescore(version, query, target, strategy, voted, bin_frames=bin_frames, radius=radius)
    return found + exhaustive(version, query, target, strategy, tracks[~fits])
