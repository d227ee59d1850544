"""One search over every shard: the request each shard answers, the exact merge of their answers and the
`Searcher` seam the API searches through (in process here; on a Ray cluster in `indexer.cluster.ray_serve`).

Exact by construction: each shard answers `indexer.search.ranking.search` over its own tracks, so its top k is the
exact top k of its part of the corpus (under an exact scheme), and the top k of the union of the shards' top
k is the exact top k of the whole corpus. The merge orders hits as the single store's `ranked_hits` does:
by score, best first; equal scores (the same tokens stored twice) by track id, the order in which a single
store indexed by the catalog (ids ascending) holds and visits them. Moments are the shard's: a track's
moments depend on that track's tokens alone.

Candidate schemes (`SearchRequest.stage`): `scheme="auto"` is decided by each shard for its own size (a shard under
`indexer.search.ranking.EXHAUSTIVE_BELOW` live frames is searched exhaustively even when the whole corpus would vote),
so a sharded corpus is at least as exact as one store; an explicit scheme is passed to every shard as given.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from indexer.search.moments import TrackHit
from indexer.search.ranking import search
from indexer.search.stage import FirstStage
from indexer.store.corpus import CorpusVersion, StoreError
from indexer.store.version import StoreVersion
from model.network import Modality
from model.similarity import Strategy


class ShardUnavailable(RuntimeError):
    """A shard with no replica that answered: the search cannot be complete (never a silent partial answer)."""

    def __init__(self, shard: int, reason: str, retry_after_s: int = 1) -> None:
        super().__init__(f"shard {shard} has no live replica ({reason}); retry later")
        self.shard, self.reason, self.retry_after_s = shard, reason, retry_after_s


class IndexMoved(ShardUnavailable):
    """A shard's version named by the searched generation is gone and no newer generation could be searched in
    its place (503: a retry reads the live generation)."""

    def __init__(self, shard: int, version: str, retry_after_s: int = 1) -> None:
        super().__init__(shard, f"its version {version} was pruned", retry_after_s)
        self.args = (f"shard {shard}: version {version} is gone (the index moved on) or not on its node yet; retry",)


class VersionGone(StoreError):
    """A shard's version that a request names is not in the replica's folder: pruned by later writes before the
    replica opened it (or, with per-node copies of the index, not copied there yet). The caller searches the live
    generation instead (`service.engine.Engine.search`)."""

    def __init__(self, shard: int, version: str) -> None:
        super().__init__(f"shard {shard}: version {version} is not there (pruned: the index moved on)")
        self.shard, self.version = shard, version

    def __reduce__(self) -> tuple[type[VersionGone], tuple[int, str]]:  # raised in a Ray actor, unpickled here
        return (VersionGone, (self.shard, self.version))


@dataclass(frozen=True)
class SearchRequest:
    """Everything of `indexer.search.ranking.search` but the version and the query tokens."""

    target: Modality
    k: int = 10
    strategy: Strategy = "diagonal_mean"
    moments: int = 3
    moment_from: Modality | None = None
    stage: FirstStage = FirstStage()

    def run(self, version: StoreVersion, query: np.ndarray) -> list[TrackHit]:
        """This request answered by one store version (a shard's, or the whole single store's)."""
        return search(
            version,
            query,
            target=self.target,
            k=self.k,
            strategy=self.strategy,
            moments=self.moments,
            moment_from=self.moment_from,
            stage=self.stage,
        )


def merge_hits(per_shard: Sequence[Sequence[TrackHit]], k: int) -> list[TrackHit]:
    """The k best of the shards' hits (each shard's best first), by score then track id (see the module)."""
    return heapq.nsmallest(k, (h for hits in per_shard for h in hits), key=lambda h: (-h.score, h.track_id))


@dataclass(frozen=True)
class ShardState:
    """A shard as /health and /metrics report it."""

    shard: int
    version: str | None  # the store version of the shard the loaded generation names (None: empty shard)
    clips: int  # live clips in it
    replicas: int  # replicas meant to serve it
    alive: int  # replicas that answered a ping just now
    nodes: tuple[str, ...] = ()  # where the live ones run (a cluster's node ids)
    failovers: int = 0  # calls given up on a replica for another one, since the searcher started
    unavailable: int = 0  # searches refused because no replica of the shard answered, since it started


class Searcher(Protocol):
    """How the API runs a search over the loaded version: in process (`LocalSearcher`) or scattered over a
    cluster's shard replicas (`indexer.cluster.ray_serve.RaySearcher`)."""

    @property
    def needs_indexes(self) -> bool:
        """Whether the caller's versions must hold their FAISS indexes (the search runs in its process)."""
        ...

    def search(self, version: CorpusVersion, query: np.ndarray, request: SearchRequest) -> list[TrackHit]: ...

    def states(self, version: CorpusVersion | None) -> list[ShardState]: ...

    def close(self) -> None: ...


def parts(version: CorpusVersion | None) -> tuple[StoreVersion | None, ...]:
    """A version's shards' versions (a single store: itself, one shard); none without a version."""
    return () if version is None else version.parts


class LocalSearcher:
    """Every shard searched here, one after the other (the embedded default: no cluster)."""

    needs_indexes = True

    def search(self, version: CorpusVersion, query: np.ndarray, request: SearchRequest) -> list[TrackHit]:
        """A single store's answer as it is; a sharded corpus's shards' answers merged."""
        found = [request.run(p, query) for p in version.parts if p is not None]
        return found[0] if len(version.parts) == 1 else merge_hits(found, request.k)

    def states(self, version: CorpusVersion | None) -> list[ShardState]:
        return [
            ShardState(s, p.name if p else None, len(p) if p else 0, 1, 1, ("local",))
            for s, p in enumerate(parts(version))
        ]

    def close(self) -> None:
        return None
