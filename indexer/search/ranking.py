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
  exactly around their best offsets (the tracks it cannot scan: exhaustively). A long query's 2nd..10th
  videos are partial overlaps that no frame's neighbours point at; the scan finds them (recall@10 1.0 at 30
  and 60 s).
One stage a module, none calling another: this module picks the candidates (`exhaustive`, `votes`, `scan`), has
them scored exactly (`exhaustive`, `windows`), then ranked with their moments (`moments`); the kernels they share
are in `sliding`.
Each scored track gives up to `moments` non-overlapping moments and is ranked by its best moment's score
(`indexer.search.moments`: where moments are placed, how they are ordered).
Deleted videos never come back: their rows are dead in the version.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np

from indexer.search.exhaustive import exhaustive
from indexer.search.moments import MomentRule, TrackHit, ranked_hits
from indexer.search.scan import scan_candidates
from indexer.search.sliding import SCAN_STRATEGIES, FloatArray, IntArray
from indexer.search.votes import vote
from indexer.search.windows import rescore
from indexer.store.version import StoreVersion
from model.network import Modality
from model.similarity import STRATEGIES, Strategy

Scheme = Literal["auto", "exhaustive", "votes", "scan"]
SCHEMES: tuple[Scheme, ...] = ("auto", "exhaustive", "votes", "scan")
EXHAUSTIVE_BELOW = 32_000  # live frames (2,000 clip-equivalents) up to which every offset is scored
SCAN_ABOVE = 16  # query frames (one clip) above which "auto" scans rather than votes


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
    found = _candidates(
        version,
        q,
        target,
        strategy,
        tracks,
        scheme,
        k=k,
        moments=moments,
        votes=(per_frame, hypotheses),
        bin_frames=bin_frames,
    )
    scored = rescore(version, q, target, strategy, found.voted, bin_frames=bin_frames, radius=radius, k=found.prefilter)
    scored += exhaustive(version, q, target, strategy, found.left)
    if not scored:
        return []
    rule = MomentRule(target, strategy, moments, moment_from)
    return ranked_hits(version, q, scored, k, rule)


def _automatic(live_frames: int, query_frames: int, strategy: Strategy) -> Scheme:
    """Small stores: exhaustive; queries longer than a clip: the scan; else the votes."""
    if live_frames <= EXHAUSTIVE_BELOW:
        return "exhaustive"
    return "scan" if query_frames > SCAN_ABOVE and strategy in SCAN_STRATEGIES else "votes"


class Candidates(NamedTuple):
    """What a candidate scheme leaves to the exact stages."""

    voted: dict[int, list[int]]  # track index -> offset bins (ascending), scored exactly +- radius (`windows`)
    left: IntArray  # (n,) tracks scored at every offset (`exhaustive`)
    prefilter: int | None  # k: the windows scored roughly first, only the tracks that may be in the top k exactly


def _candidates(
    version: StoreVersion,
    query: FloatArray,
    target: str,
    strategy: Strategy,
    tracks: IntArray,
    scheme: Scheme,
    *,
    k: int,
    moments: int,
    votes: tuple[int, int],
    bin_frames: int,
) -> Candidates:
    """The candidates of `scheme` (not "auto") among the searchable `tracks` (see the module); `votes`: (per_frame,
    hypotheses)."""
    if scheme == "exhaustive":
        return Candidates({}, tracks, None)
    if scheme == "scan":
        found = scan_candidates(version, query, target, strategy, tracks, k=k, moments=moments, bin_frames=bin_frames)
        return Candidates(found.voted, found.left, None)
    per_frame, hypotheses = votes
    voted = vote(version, query, target, per_frame=per_frame, hypotheses=hypotheses, bin_frames=bin_frames)
    return Candidates(voted, np.zeros(0, dtype=np.int64), k)
