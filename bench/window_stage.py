"""Window tokens, a sub-linear first stage for long queries measured by bench_tracks.py (`--settings windows`;
an experiment of issue 21, not in the product: BENCHMARKS.md says why).

A window is W consecutive frames of a track; its vector is the concatenation of their tokens (W x D)
projected on the d principal directions of such concatenations (uncentred: the directions that keep
inner products, measured on a sample of the store's windows). The inner product of a query window with
a stored one approximates the sum of their W aligned cosines, W x their diagonal mean, so a query's
windows point at (track, offset) placements with fewer probes than its frames (what they find:
BENCHMARKS.md). Each modality's windows, at a stride of s frames along every track of at least W frames
(and its last W frames), are in one FAISS index per store version (built once beside the bench's store):
the projection (a `LinearTransform`) in front of an IVF over the projected vectors, id = the window's
first frame's (row * T + frame), so a window is placed like a frame (`TrackTable.place`).

Searching: every window of the query (starts 0 .. Q - W) asks for its `per_window` nearest stored
windows; each answer votes, with its inner product, for the placement it implies (offset = the stored
window's place - the query window's start). Every placement is reachable: the query windows whose start
is congruent to -offset modulo s meet the stored windows at it. The `hypotheses` best-voted placements
are then scored exactly (`indexer.search.windows.rescore`) around them (offsets pooled in bins of s); tracks
shorter than W have no windows and are scored exhaustively. The cost is the probes (Q - W + 1 of them,
each visiting `probe` inverted lists) and the exact stage (hypotheses x offsets x Q x D), not the corpus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from indexer.search.exhaustive import exhaustive
from indexer.search.moments import MomentRule, TrackHit, ranked_hits
from indexer.search.ranking import searchable_tracks
from indexer.search.sliding import FloatArray, IntArray
from indexer.search.votes import Neighbours, tally
from indexer.search.windows import rescore
from indexer.store.build import CHUNK_CLIPS
from indexer.store.tracks import TrackTable
from indexer.store.version import StoreVersion

WindowRead = Callable[[IntArray], FloatArray]  # window ids (n,) -> their tokens concatenated (n, W * D)


@dataclass(frozen=True)
class WindowConfig:
    """The window index of a store version and how a query searches it."""

    frames: int = 8  # W: frames per window
    stride: int = 4  # s: frames between the starts of consecutive stored windows of a track
    dims: int = 64  # d: principal directions kept
    sample: int = 20_000  # windows sampled to find the directions and train the inverted lists
    probe: int = 16  # inverted lists visited per query window
    per_window: int = 256  # stored windows each query window votes for
    hypotheses: int = 64  # best-voted placements scored exactly


WINDOWS = WindowConfig()


def window_places(length: int, config: WindowConfig = WINDOWS) -> IntArray:
    """Starts of a track's stored windows: 0, s, 2s, ... and its last window (L - W); none if L < W."""
    if length < config.frames:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.r_[np.arange(0, length - config.frames + 1, config.stride), length - config.frames])


def window_ids(table: TrackTable, tracks: IntArray, config: WindowConfig = WINDOWS) -> IntArray:
    """Ids (first frame's row * T + frame) of the stored windows of `tracks`, ascending by track."""
    parts = [
        int(table.first_row[t]) * table.frames + window_places(int(table.length[t]), config) for t in tracks.tolist()
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def query_windows(query: FloatArray, config: WindowConfig = WINDOWS) -> FloatArray:
    """query (Q, D) -> (Q - W + 1, W * D): every window of the query, its frames concatenated."""
    width = config.frames * query.shape[1]
    views = sliding_window_view(query, config.frames, axis=0)  # (Q - W + 1, D, W)
    return np.ascontiguousarray(views.transpose(0, 2, 1)).reshape(-1, width)


def window_frames(ids: IntArray, config: WindowConfig = WINDOWS) -> IntArray:
    """(n * W,) the frame ids of the windows `ids`, window by window."""
    return (ids[:, None] + np.arange(config.frames)[None, :]).ravel()


def principal_directions(sample: FloatArray, dims: int) -> FloatArray:
    """(W * D, d): the top eigenvectors of the sample's uncentred second moment (inner products kept)."""
    moment = sample.T.astype(np.float64) @ sample.astype(np.float64)  # (W * D, W * D)
    _, vectors = np.linalg.eigh(moment)
    return np.ascontiguousarray(vectors[:, ::-1][:, :dims], dtype=np.float32)


def lists_for(windows: int) -> int:
    """Inverted lists for a store of `windows`: ~4 sqrt(n) (faiss' guideline for IVF sizes up to ~1M)."""
    return max(1, int(4 * np.sqrt(windows)))


def build_windows(read: WindowRead, ids: IntArray, width: int, config: WindowConfig = WINDOWS) -> faiss.Index:
    """A window index over the windows `ids` (see the module), whose (n, W * D = width) float32 tokens
    `read(ids)` returns: directions and lists trained on a sample."""
    rng = np.random.default_rng(0)
    sample = read(np.sort(rng.choice(ids, min(len(ids), config.sample), replace=False))) if len(ids) else None
    transform = faiss.LinearTransform(width, config.dims, False)
    if sample is not None:
        faiss.copy_array_to_vector(principal_directions(sample, config.dims).T.ravel(), transform.A)
    transform.is_trained = True
    lists = lists_for(len(ids)) if len(ids) >= 39 * 4 else 1
    quantizer = faiss.IndexFlatIP(config.dims)
    index = faiss.IndexPreTransform(
        transform, faiss.IndexIVFFlat(quantizer, config.dims, lists, faiss.METRIC_INNER_PRODUCT)
    )
    if sample is not None:
        index.train(sample)
    else:
        index.is_trained = True
    add_windows(index, read, ids)
    return index


def add_windows(index: faiss.Index, read: WindowRead, ids: IntArray) -> None:
    """Add the windows `ids` to `index`, a chunk at a time."""
    chunk = CHUNK_CLIPS * 4  # windows (~400 MB of float32 at W = 8, D = 768)
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        index.add_with_ids(read(part), part)


def read_windows(path: Path, config: WindowConfig = WINDOWS) -> faiss.Index:
    """A saved window index, its probes set."""
    index = faiss.read_index(str(path))
    faiss.extract_index_ivf(index).nprobe = config.probe
    return index


def window_index(version: StoreVersion, modality: str, folder: Path, config: WindowConfig = WINDOWS) -> faiss.Index:
    """The window index of `version`'s live tracks of `modality`, built once and kept in `folder`."""
    path = folder / f"{version.name}.{modality}.windows-{config.frames}-{config.stride}-{config.dims}.faiss"
    if not path.exists():
        table = version.tracks
        live = np.flatnonzero(table.live & version.present[modality][table.first_row])
        ids = window_ids(table, live, config)

        def read(part: IntArray) -> FloatArray:
            frames = version.frames_at(modality, window_frames(part, config))
            return np.asarray(frames, dtype=np.float32).reshape(len(part), -1)  # (n, W * D)

        index = build_windows(read, ids, config.frames * version.manifest.dim, config)
        path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(index, str(path))
    return read_windows(path, config)


def search_windows(
    version: StoreVersion,
    windows: faiss.Index,
    query: FloatArray,
    *,
    target: str,
    k: int = 10,
    moments: int = 1,
    radius: int = 2,
    config: WindowConfig = WINDOWS,
) -> list[TrackHit]:
    """Top-k tracks for query tokens (Q >= W, D) by the windows' votes, then the exact stage (see the module)."""
    q = np.ascontiguousarray(query, dtype=np.float32)
    probes = query_windows(q, config)
    sims, ids = windows.search(probes, min(config.per_window, windows.ntotal))  # (Q - W + 1, k)
    found = Neighbours(sims, ids, np.arange(len(probes), dtype=np.int64))
    voted = tally(version, target, len(q), found, hypotheses=config.hypotheses, bin_frames=config.stride).bins
    scored = rescore(version, q, target, "diagonal_mean", voted, bin_frames=config.stride, radius=radius)
    tracks = searchable_tracks(version, target)
    short = tracks[version.tracks.length[tracks] < config.frames]  # no windows: every offset scored
    scored += exhaustive(version, q, target, "diagonal_mean", short)
    return ranked_hits(version, q, scored, k, MomentRule(target, "diagonal_mean", moments)) if scored else []
