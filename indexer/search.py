"""The retrieval core: query tokens (Q, D) -> the top-k tracks (videos) of a store version, each with
its best moments. Arrays in, dataclasses out; the catalog is looked up a layer above.

A video is one track of per-frame tokens per modality (`indexer.tracks`). A query of any length is
scored at every frame offset of a track by the exact strategy of `indexer.sliding` (diagonal_mean:
the mean cosine of the aligned frame pairs). Which tracks and offsets get scored:
- "exhaustive" (automatic up to EXHAUSTIVE_BELOW live frames): every offset of every live track;
- "votes": each query frame's `per_frame` nearest frames in the FAISS index vote, with their cosine,
  for the (track, offset) hypothesis they imply (offset = frame's place in its track - query frame),
  offsets pooled in bins of `bin_frames`; the `hypotheses` best-voted bins are scored exactly over
  their offsets +- `radius` frames (the Shazam / audfprint offset histogram, on our exact score).
Tracks are ranked by their best offset's score; each gives up to `moments` non-overlapping moments.
Deleted videos never come back: their rows are dead in the version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from indexer.sliding import FloatArray, IntArray, frame_cosines, pick_moments, score_offsets
from indexer.store import StoreVersion
from model.network import Modality
from model.similarity import STRATEGIES, Strategy

Scheme = Literal["auto", "exhaustive", "votes"]
SCHEMES: tuple[Scheme, ...] = ("auto", "exhaustive", "votes")
EXHAUSTIVE_BELOW = 32_000  # live frames (2,000 clip-equivalents) up to which every offset is scored


@dataclass(frozen=True)
class Moment:
    """Where in a track the query matched: the offset of the query's first frame in the track (negative:
    the track starts inside a longer query), the seconds the aligned frames cover, the score there and
    the cosine of each aligned (query frame, track frame) pair."""

    offset: int
    start: float
    end: float
    score: float
    frame_scores: tuple[float, ...]


@dataclass(frozen=True)
class TrackHit:
    track_id: int  # the id the track was stored under (the catalog's video id)
    clip_id: int  # the catalog clip id of the track's first row
    score: float  # the best score over every offset scored
    moments: tuple[Moment, ...]  # best first, non-overlapping


@dataclass(frozen=True)
class Scored:
    """Exact scores of one track at a contiguous run of offsets."""

    track: int  # index into the version's TrackTable
    offsets: IntArray  # (W,)
    scores: FloatArray  # (W,)
    aligned: int


def searchable_tracks(version: StoreVersion, modality: str) -> IntArray:
    """Indices of the live tracks that have `modality`."""
    table = version.tracks
    return np.flatnonzero(table.live & version.present[modality][table.first_row]).astype(np.int64)


def exhaustive(version: StoreVersion, query: FloatArray, target: str, strategy: Strategy) -> list[Scored]:
    """Every offset of every live track, tracks of one length scored in one batch."""
    table, out = version.tracks, []
    tracks = searchable_tracks(version, target)
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
    table, index = version.tracks, version.index[target]
    sims, ids = index.search(query, min(per_frame, index.ntotal))  # (Q, k)
    found = ids >= 0
    track, place = table.place(np.where(found, ids, 0))
    alive = table.live[track] & version.present[target][table.first_row[track]] & (place < table.length[track])
    offsets = place - np.arange(len(query))[:, None]
    spare = table.length[track] - len(query)  # offsets run from min(0, spare) to max(0, spare)
    keep = found & alive & (offsets >= np.minimum(0, spare)) & (offsets <= np.maximum(0, spare))
    bins = np.floor_divide(offsets, bin_frames)[keep]
    keys = track[keep] * (1 << 32) + (bins + (1 << 31))
    unique, inverse = np.unique(keys, return_inverse=True)
    votes = np.bincount(inverse, weights=sims[keep].astype(np.float64))
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
) -> list[Scored]:
    """Exact scores of each voted track over its hypotheses' offsets +- radius frames (one window per run
    of nearby bins; the windows' offsets joined, ascending)."""
    table, length, out = version.tracks, len(query), []
    for track, bins in voted.items():
        frames = int(table.length[track])
        if length >= frames:  # the whole track fits in the query: every offset (at most Q - L + 1)
            found = score_offsets(query, version.track_frames(target, track)[None], strategy)
            out.append(Scored(track, found.offsets, found.scores[0], found.aligned))
            continue
        windows = _windows(bins, bin_frames=bin_frames, radius=radius, spare=frames - length)
        parts = []
        for low, high in windows:  # offsets low .. high
            found = score_offsets(query, version.track_frames(target, track, low, high + length)[None], strategy)
            parts.append((found.offsets + low, found.scores[0], found.aligned))
        offsets = np.concatenate([p[0] for p in parts])
        out.append(Scored(track, offsets, np.concatenate([p[1] for p in parts]), parts[0][2]))
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
    per_frame: int = 64,
    hypotheses: int = 64,
    bin_frames: int = 4,
    radius: int = 4,
) -> list[TrackHit]:
    """Top-k tracks of the `target` modality for L2-normalised query tokens (Q, D), best first.

    `moment_from`: the query's own modality; when given, each hit's moments are the query's best
    placements on the track of that modality (an audio excerpt on the video's soundtrack: where it
    sounds like the excerpt), scored there against the target; else the target's best offsets.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown candidate scheme {scheme!r}; choose one of {SCHEMES}")
    if query.ndim != 2 or query.shape[1] != version.manifest.dim or len(query) == 0:
        raise ValueError(f"query tokens must be (Q >= 1, {version.manifest.dim}), got {tuple(query.shape)}")
    q = np.ascontiguousarray(query, dtype=np.float32)
    live_frames = int(version.tracks.length[searchable_tracks(version, target)].sum())
    if scheme == "exhaustive" or (scheme == "auto" and live_frames <= EXHAUSTIVE_BELOW):
        scored = exhaustive(version, q, target, strategy)
    else:
        voted = vote(version, q, target, per_frame=per_frame, hypotheses=hypotheses, bin_frames=bin_frames)
        scored = rescore(version, q, target, strategy, voted, bin_frames=bin_frames, radius=radius)
    if not scored:
        return []
    best = np.array([s.scores.max() for s in scored])
    top = [scored[i] for i in np.argsort(-best, kind="stable")[:k]]
    return [
        _hit(version, q, s, target=target, strategy=strategy, moments=moments, moment_from=moment_from) for s in top
    ]


def _hit(
    version: StoreVersion,
    query: FloatArray,
    scored: Scored,
    *,
    target: str,
    strategy: Strategy,
    moments: int,
    moment_from: str | None,
) -> TrackHit:
    table = version.tracks
    offsets, scores = scored.offsets, scored.scores
    if moment_from is not None and version.present[moment_from][table.first_row[scored.track]]:
        own = score_offsets(query, version.track_frames(moment_from, scored.track)[None])
        offsets, scores = own.offsets, own.scores[0]
    picked = [int(offsets[i]) for i in pick_moments(offsets, scores, scored.aligned, moments)]
    step, aligned = version.frame_s, scored.aligned
    found = []
    for offset in picked:
        start = max(offset, 0)
        track_tokens = version.track_frames(target, scored.track, start, start + aligned)  # the aligned frames
        cosines = frame_cosines(query, track_tokens, min(offset, 0))
        found.append(
            Moment(
                offset=offset,
                start=round(start * step, 3),
                end=round((start + aligned) * step, 3),
                score=score_at(query, track_tokens, min(offset, 0), strategy),
                frame_scores=cosines,
            )
        )
    row = int(table.first_row[scored.track])
    return TrackHit(int(table.ids[scored.track]), int(version.clip_ids[row]), float(scored.scores.max()), tuple(found))


def score_at(query: FloatArray, track: FloatArray, offset: int, strategy: Strategy) -> float:
    """The exact score of query (Q, D) at `offset` of track (L, D): the aligned block alone, scored."""
    if len(query) <= len(track):
        return float(score_offsets(query, track[None, offset : offset + len(query)], strategy).scores[0, 0])
    return float(score_offsets(query[-offset : -offset + len(track)], track[None], strategy).scores[0, 0])
