"""Task truth of bench_tracks.py (issue 30): what a query really shares with the corpus, from how the corpus
was built (`structured_corpus.Corpus`), beside the exact search's top 10.

- *relevant*: the query's source video, and every video holding the same content over at least half of the
  query's span through near-copies, either direction: the query's span in its source overlaps a copied
  segment by >= half the query -> the copy's target is relevant; the source itself holds a copy of another
  video's segment overlapping the span by >= half -> that other video is relevant. Followed transitively (the
  overlap mapped through each copy), so two copies of one segment make each other relevant.
- *chance ceiling*: the best exact score of a video neither relevant nor of the query's topic (the random
  corpus, one topic per video: the best of the videos not relevant).
- *significant*: the exact top-10 videos scoring above the chance ceiling.
- *topical precision@10*: the share of ten hits (missing hits count as misses) relevant or of the query's topic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from structured_corpus import Copy


def relevant_videos(copies: Sequence[Copy], video: int, start: float, frames: int) -> set[int]:
    """The videos relevant to a query of `frames` frames cut at `start` (a float frame position) of `video`."""
    need = 0.5 * frames
    found = {video}
    frontier = [(video, start, start + frames)]
    while frontier:
        at, lo, hi = frontier.pop()
        for copy in copies:
            for here, there, here_start, there_start in (
                (copy.source, copy.target, copy.source_start, float(copy.target_start)),
                (copy.target, copy.source, float(copy.target_start), copy.source_start),
            ):
                if here != at or there in found:
                    continue
                first, last = max(lo, here_start), min(hi, here_start + copy.frames)
                if last - first >= need:
                    found.add(there)
                    frontier.append((there, first - here_start + there_start, last - here_start + there_start))
    return found


def chance_ceiling(scores: np.ndarray, relevant: set[int], topics: np.ndarray, topic: int) -> float:
    """The best of `scores` (V,) over the videos neither in `relevant` nor of `topic`; -inf if there is none."""
    unrelated = topics != topic
    unrelated[list(relevant)] = False
    return float(scores[unrelated].max()) if unrelated.any() else -np.inf


def significant(top10: Sequence[int], scores: np.ndarray, ceiling: float) -> list[int]:
    """The videos of the exact `top10` scoring above the chance `ceiling`."""
    return [v for v in top10 if scores[v] > ceiling]


def topical_precision(hits: Sequence[int], relevant: set[int], topics: np.ndarray, topic: int, k: int = 10) -> float:
    """Share of the k hits (fewer count as misses) relevant or of the query's `topic`."""
    return sum(1 for v in list(hits)[:k] if v in relevant or topics[v] == topic) / k
