"""From a track's exact scores to a hit: its moments placed, scored and ordered, and the top k hits.

A hit's moments are non-overlapping placements of the query in its track (`indexer.search.sliding.pick_moments`),
each with its exact `score` against the target modality. Where they are placed:
- by the target's own scores (the best placements, the centre of equally good runs), when the query's
  modality is unknown or the video lacks it;
- on the video's track of the query's own modality when both are known (an audio excerpt: where the
  video sounds like it, a far finer localisation than sound against pictures), keeping the placements
  that match there as well as the best (within MATCH_TOLERANCE: the tolerance within which placements fit
  equally everywhere else, TIE_TOLERANCE); that similarity is the moment's
  `match`. The target's score is far coarser in time: `tests/service/test_moments.py` measured the first
  moment covering a 3-s excerpt for 19/20 with this tolerance (also at 0.005 and 0.01), 11/20 when the
  own-modality placements were kept whatever their match and ordered by the target's score, and 10/20
  when the target's scores placed them; a wider tolerance also ties more places of an untrained model's
  near-equal tokens.
The moments are sorted by their `score`, best first, and the hit's score is the first one's, so the
target's score orders places that fit the query equally well, never a clearly worse fit first. Hits
are ranked by that score (`ranked_hits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexer.search.sliding import (
    SCAN_STRATEGIES,
    FloatArray,
    IntArray,
    frame_cosines,
    pick_moments,
    reduce_pairs,
    score_at,
    score_offsets,
)
from indexer.store.version import StoreVersion
from model.similarity import TIE_TOLERANCE, Strategy

MATCH_TOLERANCE = TIE_TOLERANCE  # own-modality placements that fit as well as the best one are its moments


@dataclass(frozen=True)
class Moment:
    """Where in a track the query matched: the offset of the query's first frame in the track (negative:
    the track starts inside a longer query), the seconds the aligned frames cover, the score there (against
    the target modality, what ranks), the cosine of each aligned (query frame, track frame) pair, and
    `match`: the query's score against the track of its own modality at the same place (None when the
    query's modality is unknown or the video lacks it), which placed the moment."""

    offset: int
    start: float
    end: float
    score: float
    frame_scores: tuple[float, ...]
    match: float | None = None


@dataclass(frozen=True)
class TrackHit:
    track_id: int  # the id the track was stored under (the catalog's video id)
    clip_id: int  # the catalog clip id of the track's first row
    score: float  # its first moment's score: the best of its moments
    moments: tuple[Moment, ...]  # sorted by score, best first; non-overlapping


@dataclass(frozen=True)
class Scored:
    """Exact scores of one track at a contiguous run of offsets."""

    track: int  # index into the version's TrackTable
    offsets: IntArray  # (W,)
    scores: FloatArray  # (W,)
    aligned: int


@dataclass(frozen=True)
class MomentRule:
    """How a hit's moments are placed and scored (see the module)."""

    target: str  # the modality the query is scored against
    strategy: Strategy
    count: int  # moments per hit, at most
    own: str | None = None  # the query's own modality, where moments are placed when the video has it


def ranked_hits(
    version: StoreVersion, query: FloatArray, scored: list[Scored], k: int, rule: MomentRule
) -> list[TrackHit]:
    """The k best hits by their score (their first moment's). A moment's score is the track's score at one
    of its offsets, so where every offset was scored (the exhaustive scheme) a track's best scored offset bounds
    its hit: tracks are visited best bound first and the visit stops once no bound left can reach the k-th hit
    found (usually a few more than k visited). Under the votes or the scan only windows of offsets are scored,
    and a moment placed on the query's own modality may lie outside them and score above that bound: there the
    order of the visit is as approximate as the candidates themselves (a track is not visited because its scored
    windows fell short, as it would not have been a candidate)."""
    bounds = np.array([s.scores.max() for s in scored])
    hits: list[tuple[float, int, TrackHit]] = []  # (-score, visit order, hit), best first
    for rank, i in enumerate(np.argsort(-bounds, kind="stable").tolist()):
        if len(hits) >= k and bounds[i] < -hits[k - 1][0]:
            break
        hit = track_hit(version, query, scored[i], rule)
        hits.append((-hit.score, rank, hit))
        hits.sort(key=lambda entry: entry[:2])
    return [hit for _, _, hit in hits[:k]]


def track_hit(version: StoreVersion, query: FloatArray, scored: Scored, rule: MomentRule) -> TrackHit:
    """A track's moments, placed, scored against the target and sorted (see the module)."""
    table = version.tracks
    offsets, scores, placed_on_own = scored.offsets, scored.scores, False
    if rule.own is not None and version.present[rule.own][table.first_row[scored.track]]:
        own = score_offsets(query, version.track_frames(rule.own, scored.track)[None], rule.strategy)
        offsets, scores, placed_on_own = own.offsets, own.scores[0], True
    chosen = pick_moments(offsets, scores, scored.aligned, rule.count)
    if placed_on_own:
        chosen = [i for i in chosen if scores[i] >= scores[chosen[0]] - MATCH_TOLERANCE]
    found = [
        moment_at(version, query, scored, int(offsets[i]), rule, float(scores[i]) if placed_on_own else None)
        for i in chosen
    ]
    found.sort(key=lambda m: -m.score)  # stable: equal scores keep the placement order
    row = int(table.first_row[scored.track])
    return TrackHit(int(table.ids[scored.track]), int(version.clip_ids[row]), found[0].score, tuple(found))


def moment_at(
    version: StoreVersion, query: FloatArray, scored: Scored, offset: int, rule: MomentRule, match: float | None
) -> Moment:
    """The moment of the query at `offset` of a track: the aligned frames' seconds and the exact score there."""
    start, aligned = max(offset, 0), scored.aligned
    track_tokens = version.track_frames(rule.target, scored.track, start, start + aligned)  # the aligned frames
    cosines = frame_cosines(query, track_tokens, min(offset, 0))  # (n,)
    if rule.strategy in SCAN_STRATEGIES:  # the score from the same cosines
        score = float(reduce_pairs(cosines[None, None], len(query), rule.strategy)[0, 0])
    else:
        score = score_at(query, track_tokens, min(offset, 0), rule.strategy)
    return Moment(
        offset=offset,
        start=round(start * version.frame_s, 3),
        end=round((start + aligned) * version.frame_s, 3),
        score=score,
        frame_scores=tuple(cosines.tolist()),
        match=match,
    )
