"""The retrieval core: query tokens (Q, D) -> the top-k tracks (videos) of a store version, each with
its best moments. Arrays in, dataclasses out; the catalog is looked up a layer above.

A video is one track of per-frame tokens per modality (`indexer.store.tracks`). A query of any length is
scored at every frame offset of a track by the exact strategy of `indexer.search.sliding` (diagonal_mean:
(1/Q) sum of the cosines of the aligned frame pairs). Which tracks and offsets get scored:
- "exhaustive" (automatic up to EXHAUSTIVE_BELOW live frames): every offset of every live track;
- "votes" (automatic above, every query length): the query's probing frames (all of a query of up to `probes`
  frames, else `probes` spread evenly over it) each find their `per_frame` nearest frames in the FAISS index of
  the store version, which vote, with their cosine, for the (track, offset) hypothesis they imply (offset =
  frame's place in its track - probing frame), offsets pooled in bins of `bin_frames` (the Shazam / audfprint
  offset histogram). The `hypotheses` best-voted bins, +- `radius` frames, are scored exactly for a query of up
  to 8 frames; for a longer one roughly first, from the coarse centroids of the index (no token read;
  `indexer.search.windows.rough_means`), and one window per run of a track's nearby bins exactly, of the
  KEPT_PER_HIT x k runs scoring best roughly (the best-voted bin's window, else the roughly best). The cost
  grows with the probes, not with the query's
  length, and with the corpus only through the index (IVF lists of ~sqrt(n) frames; BENCHMARKS.md, issue 30);
- "scan" (asked for; diagonal strategies): `indexer.search.scan` scores every offset of every track in float16
  products and nominates the tracks near the k-th best, which are then scored exactly around their best
  offsets (the tracks it cannot scan: exhaustively). It reads every stored token: seconds per long query at
  1.6M frames, the reference the votes are measured against.
One stage a module, none calling another: this module picks the candidates (`exhaustive`, `votes`, `scan`), has
them scored exactly (`exhaustive`, `windows`), then ranked with their moments (`moments`); the kernels they share
are in `sliding`.
Each scored track gives up to `moments` non-overlapping moments and is ranked by its best moment's score
(`indexer.search.moments`: where moments are placed, how they are ordered).
Deleted videos never come back: their rows are dead in the version.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np

from indexer.search.exhaustive import exhaustive
from indexer.search.moments import MomentRule, TrackHit, ranked_hits
from indexer.search.scan import scan_candidates
from indexer.search.sliding import FloatArray, IntArray
from indexer.search.stage import FirstStage
from indexer.search.votes import vote
from indexer.search.windows import rescore
from indexer.store.version import StoreVersion
from model.network import Modality
from model.similarity import STRATEGIES, Strategy

EXHAUSTIVE_BELOW = 32_000  # live frames (2,000 clip-equivalents) up to which every offset is scored
DEFAULT_STAGE = FirstStage()  # auto: exhaustive up to EXHAUSTIVE_BELOW, else the votes


def searchable_tracks(version: StoreVersion, modality: str) -> IntArray:
    """Indices of the live tracks that have `modality`."""
    table = version.tracks
    return np.flatnonzero(table.live & version.present[modality][table.first_row]).astype(np.int64)


def search(
    version: StoreVersion,
    query: np.ndarray,
    *,
    target: Modality,
    k: int = 10,
    strategy: Strategy = "diagonal_mean",
    stage: FirstStage = DEFAULT_STAGE,
    moments: int = 3,
    moment_from: Modality | None = None,
    bin_frames: int = 4,
    radius: int = 4,
) -> list[TrackHit]:
    """Top-k tracks of the `target` modality for L2-normalised query tokens (Q, D), best first.

    `stage`: how the candidates are found (the scheme, the votes' settings; `FirstStage`). `moment_from`: the
    query's own modality; when given, each hit's moments are the query's best
    placements on the track of that modality (an audio excerpt on the video's soundtrack: where it
    sounds like the excerpt), those that match as well as the best kept; else the target's best
    offsets. Moments are sorted by their score against the target; a hit's score is its first moment's
    (`indexer.search.moments`).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if query.ndim != 2 or query.shape[1] != version.manifest.dim or len(query) == 0:
        raise ValueError(f"query tokens must be (Q >= 1, {version.manifest.dim}), got {tuple(query.shape)}")
    q = np.ascontiguousarray(query, dtype=np.float32)
    tracks = searchable_tracks(version, target)
    scheme = stage.scheme
    if scheme == "auto":
        scheme = "exhaustive" if int(version.tracks.length[tracks].sum()) <= EXHAUSTIVE_BELOW else "votes"
    found = _candidates(
        version, q, target, strategy, tracks, replace(stage, scheme=scheme), k=k, moments=moments, bin_frames=bin_frames
    )
    scored = rescore(
        version,
        q,
        target,
        strategy,
        found.voted,
        bin_frames=bin_frames,
        radius=radius,
        k=found.prefilter,
        lead=found.lead,
    )
    scored += exhaustive(version, q, target, strategy, found.left)
    if not scored:
        return []
    rule = MomentRule(target, strategy, moments, moment_from)
    return ranked_hits(version, q, scored, k, rule)


class Candidates(NamedTuple):
    """What a candidate scheme leaves to the exact stages."""

    voted: dict[int, list[int]]  # track index -> offset bins (ascending), scored exactly +- radius (`windows`)
    left: IntArray  # (n,) tracks scored at every offset (`exhaustive`)
    prefilter: int | None  # k: the windows scored roughly first, only the tracks that may be in the top k exactly
    lead: dict[int, int]  # track index -> its best-voted bin (the votes'), the window kept of its run


def _candidates(
    version: StoreVersion,
    query: FloatArray,
    target: str,
    strategy: Strategy,
    tracks: IntArray,
    stage: FirstStage,
    *,
    k: int,
    moments: int,
    bin_frames: int,
) -> Candidates:
    """The candidates of `stage.scheme` (not "auto") among the searchable `tracks` (see the module)."""
    if stage.scheme == "exhaustive":
        return Candidates({}, tracks, None, {})
    if stage.scheme == "scan":
        found = scan_candidates(version, query, target, strategy, tracks, k=k, moments=moments, bin_frames=bin_frames)
        return Candidates(found.voted, found.left, None, {})
    voted = vote(
        version,
        query,
        target,
        per_frame=stage.per_frame,
        hypotheses=stage.hypotheses,
        bin_frames=bin_frames,
        probes=stage.probes,
    )
    return Candidates(voted.bins, np.zeros(0, dtype=np.int64), k, voted.lead)
