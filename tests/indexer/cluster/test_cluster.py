"""The shards served by a real local Ray cluster of 3 nodes (`ray.cluster_utils.Cluster`): S=3 shards, R=2
replicas. Exact answers against the single store, a node removed under a search loop (with a delete in it),
a shard without a live replica. The measured figures go to $CAVSYNC_FAULT_REPORT (RELIABILITY.md)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from indexer.cluster.corpus import ShardedStore, ShardedVersion, shard_of
from indexer.cluster.ray_serve import ClusterConfig, RaySearcher
from indexer.cluster.scatter import LocalSearcher, SearchRequest, ShardUnavailable, VersionGone
from indexer.search.moments import TrackHit
from indexer.search.stage import FirstStage
from indexer.store.token_store import TokenStore

from ...ray_cluster import RESOURCE, LocalCluster
from ..shard_corpus import T, add, assert_same_hits, cases, queries, videos

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]

S, R = 3, 2


@dataclass
class Deployment:
    cluster: Cluster
    workers: list[Any]  # the two non-head nodes (the head holds this driver: never removed)
    single: TokenStore
    sharded: ShardedStore
    searcher: RaySearcher
    corpus: list[tuple[int, Any, Any, bool]] = field(default_factory=list)


@pytest.fixture(scope="module")
def deployment(ray_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("cluster")
    single, sharded = TokenStore(root / "single"), ShardedStore(root / "sharded", S)
    corpus = videos(210, seed=5)
    for start in range(0, len(corpus), 105):
        add(single, corpus[start : start + 105])
        add(sharded, corpus[start : start + 105])
    config = ClusterConfig(
        ray_cluster.address, root / "sharded", S, R, RESOURCE, ray_cluster.namespace, detached=False, call_timeout_s=20
    )
    searcher = RaySearcher.start(config)
    assert searcher.wait_ready(120), searcher.states(None)
    yield Deployment(ray_cluster.cluster, ray_cluster.workers, single, sharded, searcher, corpus)


def _report(name: str, **figures: Any) -> None:
    target = os.environ.get("CAVSYNC_FAULT_REPORT")
    if target:
        with open(target, "a") as out:
            out.write(json.dumps({"fault": name, **figures}) + "\n")


def _replica_nodes(searcher: RaySearcher, timeout_s: float = 5.0) -> dict[tuple[int, int], str | None]:
    """(shard, replica) -> the node it answers from, None when it does not answer in time."""
    out: dict[tuple[int, int], str | None] = {}
    for s, replicas in enumerate(searcher.actors):
        for r, actor in enumerate(replicas):
            try:
                out[(s, r)] = ray.get(actor.state.remote(), timeout=timeout_s)["node"]
            except Exception:
                out[(s, r)] = None
    return out


def test_s3_r2_answers_equal_the_single_store(deployment: Deployment) -> None:
    one, many = deployment.single.open(), deployment.sharded.open(indexes=False)  # the API maps tokens only
    assert isinstance(many, ShardedVersion) and one is not None
    nodes = _replica_nodes(deployment.searcher)
    assert all(nodes.values()) and all(nodes[(s, 0)] != nodes[(s, 1)] for s in range(S))  # replicas apart
    for query in queries(1):
        for strategy, target, own in cases():
            request = SearchRequest(target, k=12, strategy=strategy, stage=FirstStage("exhaustive"), moment_from=own)  # type: ignore[arg-type]  # the cases are valid literals
            assert_same_hits(deployment.searcher.search(many, query, request), request.run(one, query))
    request, query = SearchRequest("visual", k=10, moment_from="audio"), queries(1)[2]
    expected = request.run(one, query)
    for s, replicas in enumerate(deployment.searcher.actors):  # every replica answers its shard alike
        name = many.generation.versions[s]
        answers = [ray.get(a.search.remote(name, query, request), timeout=30) for a in replicas]
        assert_same_hits(answers[0], answers[1])
    assert_same_hits(deployment.searcher.search(many, query, request), expected)


@dataclass
class Record:
    started: float
    ended: float
    generation: str
    query: int
    hits: list[TrackHit] | None
    error: str | None = None


def _loop(deployment: Deployment, stop: threading.Event, out: list[Record], limit: int) -> None:
    """The API's side: the live generation (reopened when it moves), one search after the other."""
    store, searcher, qs = deployment.sharded, deployment.searcher, deployment_queries(deployment)
    view = store.open(indexes=False)
    request = SearchRequest("visual", k=8, stage=FirstStage("exhaustive"), moment_from="audio")
    for i in range(limit):
        if stop.is_set():
            return
        if view is None or store.current_name() != view.name:
            view = store.open(indexes=False)
        assert view is not None
        started = time.monotonic()
        try:
            hits, error = searcher.search(view, qs[i % len(qs)], request), None
        except Exception as exc:  # counted: the test asserts how many and why
            hits, error = None, f"{type(exc).__name__}: {exc}"
        out.append(Record(started, time.monotonic(), view.name, i % len(qs), hits, error))


def deployment_queries(deployment: Deployment) -> list[Any]:
    """Excerpts of corpus videos (the first, the one deleted under the loop, ranks first for its own)."""
    return [deployment.corpus[v][2][2 : 2 + T] for v in (0, 40, 80, 120) if len(deployment.corpus[v][2]) >= T + 2] + [
        q for q in queries(1)
    ]


def test_a_node_lost_under_load(deployment: Deployment) -> None:
    cluster, searcher, store = deployment.cluster, deployment.searcher, deployment.sharded
    victim = deployment.workers[0]
    before = _replica_nodes(searcher)
    lost = [key for key, node in before.items() if node == victim.node_id]
    assert lost, before
    records: list[Record] = []
    stop = threading.Event()
    loop = threading.Thread(target=_loop, args=(deployment, stop, records, 100_000), daemon=True)
    loop.start()
    _wait(lambda: len(records) >= 20, 120)
    killed_at = time.monotonic()
    cluster.remove_node(victim)
    removed_at = time.monotonic()
    back = _wait(lambda: all(_replica_nodes(searcher, 1.0).values()), 60)
    back_s = back - removed_at
    # a delete during the loop: the first corpus video (the first query's source)
    gone = deployment.corpus[0][0]
    in_flight = len(records)
    generation = store.delete([gone * 100 + r for r in range(200)])
    deleted_at = time.monotonic()
    _wait(lambda: len(records) >= in_flight + 40, 120)
    stop.set()
    loop.join(60)
    after = _replica_nodes(searcher)
    failed = [r for r in records if r.error is not None]
    late = [r for r in records if r.started > deleted_at]
    early = [r for r in records if r.ended < deleted_at and r.query == 0 and r.hits]
    assert early and all(r.hits and r.hits[0].track_id == gone for r in early)  # found first until deleted
    outage = [r for r in records if removed_at <= r.started <= back]
    returned = [r for r in late if r.hits is not None and gone in {h.track_id for h in r.hits}]
    _check_answers(deployment, records)
    _report(
        "ray node removed under a search loop (S=3, R=2, 3 nodes)",
        searches=len(records),
        searches_while_replicas_down=len(outage),
        failed=len(failed),
        errors=sorted({r.error for r in failed if r.error}),
        replicas_lost=len(lost),
        replicas_back_s=round(back_s, 2),
        failovers=sum(searcher.failovers),
        searches_after_delete=len(late),
        deleted_returned_after_delete=len(returned),
        generation_after_delete=generation,
        kill_to_removed_s=round(removed_at - killed_at, 2),
    )
    assert back_s < 60
    assert not failed, failed[:3]  # the calls in flight on the lost replicas were sent to the other ones
    assert late and not returned
    assert all(after.values()) and set(after.values()) <= {n for n in before.values() if n != victim.node_id}


def _check_answers(deployment: Deployment, records: list[Record]) -> None:
    """Every answer equals the in-process search of its generation (the single store's, `test_s3_r2_...`)."""
    qs = deployment_queries(deployment)
    request = SearchRequest("visual", k=8, stage=FirstStage("exhaustive"), moment_from="audio")
    expected: dict[tuple[str, int], list[TrackHit]] = {}
    for record in records:
        if record.hits is None:
            continue
        key = (record.generation, record.query)
        if key not in expected:
            generation = deployment.sharded.generation(record.generation)
            assert generation is not None
            view = ShardedVersion(generation, tuple(_open(deployment.sharded, generation.versions)))
            expected[key] = LocalSearcher().search(view, qs[record.query], request)
        assert_same_hits(record.hits, expected[key])


def _open(store: ShardedStore, names: tuple[str | None, ...]) -> Iterator[Any]:
    from indexer.store.version import StoreVersion

    for shard, name in zip(store.stores, names, strict=True):
        yield None if name is None else StoreVersion(shard.root, name)


def _wait(condition: Any, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        time.sleep(0.1)
    return time.monotonic()


def test_a_version_pruned_before_the_replicas_opened_it_is_version_gone(deployment: Deployment) -> None:
    """The API's generation names a shard version that later writes pruned before any replica opened it: the
    searcher raises `VersionGone` naming the shard (the API then searches the live generation), not a 500."""
    store, searcher = deployment.sharded, deployment.searcher
    mine = [v for v, *_ in deployment.corpus[1:] if shard_of(v, S) == 2][-4:]  # never deleted before
    store.delete([mine[0] * 100 + r for r in range(200)])
    view = store.open(indexes=False)  # a generation no replica has opened
    assert view is not None
    for video in mine[1:]:  # 3 more versions of shard 2: the view's one is pruned
        store.delete([video * 100 + r for r in range(200)])
    query, request = queries(1)[1], SearchRequest("visual", k=8, stage=FirstStage("exhaustive"))
    with pytest.raises(VersionGone) as gone:
        searcher.search(view, query, request)
    assert (gone.value.shard, gone.value.version) == (2, view.generation.versions[2])
    live, local = store.open(indexes=False), store.open()
    assert live is not None and local is not None
    assert_same_hits(searcher.search(live, query, request), LocalSearcher().search(local, query, request))


def test_a_shard_without_a_live_replica_is_refused_by_name(deployment: Deployment) -> None:
    """Last in the module: it ends both replicas of shard 1 for good."""
    searcher, view = deployment.searcher, deployment.sharded.open(indexes=False)
    assert view is not None
    for actor in searcher.actors[1]:
        ray.kill(actor, no_restart=True)
    with pytest.raises(ShardUnavailable, match="shard 1 has no live replica") as refused:
        searcher.search(view, queries(1)[0], SearchRequest("visual"))
    assert refused.value.shard == 1 and refused.value.retry_after_s >= 1
    states = searcher.states(view)
    assert [s.alive for s in states] == [2, 0, 2] and states[1].unavailable == 1
    _report("a shard with no live replica", answer="ShardUnavailable -> 503 + Retry-After", shard=1)
