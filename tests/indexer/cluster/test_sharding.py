"""Shards in process: assignment, generations (never half a publish, never a deleted video) and the exact merge
against the single store over the same corpus."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from indexer.cluster.corpus import ShardedStore, ShardedVersion, open_corpus, shard_name, shard_of
from indexer.cluster.scatter import LocalSearcher, SearchRequest, VersionGone, merge_hits
from indexer.search.stage import FirstStage
from indexer.store.datadir import DataDir
from indexer.store.token_store import StoreError, TokenStore

from ..shard_corpus import FIRST_ID, add, assert_same_hits, cases, queries, videos

S = 3


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[TokenStore, ShardedStore]:
    """The same 210 videos (in 3 batches) in one store and in 3 shards."""
    root = tmp_path_factory.mktemp("corpus")
    single, sharded = TokenStore(root / "single"), ShardedStore(root / "sharded", S)
    corpus = videos(210)
    for start in range(0, len(corpus), 70):
        add(single, corpus[start : start + 70])
        add(sharded, corpus[start : start + 70])
    return single, sharded


def test_a_video_goes_to_one_shard_by_its_id_and_the_shards_are_balanced() -> None:
    assert shard_of(12345, 7) == shard_of(12345, 7)
    counts = Counter(shard_of(v, S) for v in range(1, 3001))
    assert set(counts) == {0, 1, 2} and min(counts.values()) > 900
    strided = Counter(shard_of(v, S) for v in range(3, 3001, 3))  # ids of one stride do not pile on one shard
    assert min(strided.values()) > 250


def test_every_strategy_and_modality_answers_as_the_single_store(stores: tuple[TokenStore, ShardedStore]) -> None:
    single, sharded = stores
    one, many = single.open(), sharded.open()
    assert isinstance(many, ShardedVersion) and one is not None
    assert len(many) == len(one) and all(p is not None and len(p) > 0 for p in many.parts)
    searcher = LocalSearcher()
    for query in queries(1):
        for strategy, target, own in cases():
            request = SearchRequest(
                target, k=12, strategy=strategy, stage=FirstStage("exhaustive"), moments=3, moment_from=own
            )  # type: ignore[arg-type]  # the cases are valid literals
            assert_same_hits(searcher.search(many, query, request), request.run(one, query))


def test_equal_scores_keep_the_single_stores_order(stores: tuple[TokenStore, ShardedStore]) -> None:
    """Video 1024 repeats 1023 (shard_of puts them apart or not): a query cut from them ties them."""
    single, sharded = stores
    one, many = single.open(), sharded.open()
    assert one is not None and many is not None
    query = one.track_frames("visual", int(np.flatnonzero(one.tracks.ids == FIRST_ID + 23)[0]))[:T_Q]
    request = SearchRequest("visual", k=5, stage=FirstStage("exhaustive"))
    expected = request.run(one, query)
    assert [h.track_id for h in expected[:2]] == [FIRST_ID + 23, FIRST_ID + 24] and expected[0].score == expected[
        1
    ].score
    assert_same_hits(LocalSearcher().search(many, query, request), expected)


T_Q = 10


def test_merge_takes_the_best_of_each_shard() -> None:
    from indexer.search.moments import TrackHit

    def hit(track: int, score: float) -> TrackHit:
        return TrackHit(track, track * 100, score, ())

    merged = merge_hits([[hit(5, 0.9), hit(2, 0.5)], [hit(7, 0.9), hit(1, 0.7)], []], 3)
    assert [(h.track_id, h.score) for h in merged] == [(5, 0.9), (7, 0.9), (1, 0.7)]


def test_a_reader_sees_whole_generations_and_never_a_deleted_video(tmp_path: Path) -> None:
    store = ShardedStore(tmp_path / "index", S)
    corpus = videos(30, seed=3)
    add(store, corpus[:20])
    before = store.open()
    assert before is not None
    gone = corpus[0][0]
    store.delete([gone * 100 + r for r in range(20)])
    add(store, corpus[20:])
    after = store.open()
    assert after is not None and after.number == before.number + 2
    query = corpus[0][2][:5]
    request = SearchRequest("visual", k=30, stage=FirstStage("exhaustive"))
    old = {h.track_id for h in LocalSearcher().search(before, query, request)}
    new = {h.track_id for h in LocalSearcher().search(after, query, request)}
    assert gone in old and gone not in new
    assert old == {v for v, *_ in corpus[:20]} and new == {v for v, *_ in corpus[1:]}  # whole publishes only
    generation = json.loads((tmp_path / "index" / "generations" / f"{after.name}.json").read_text())
    assert generation["versions"] == [p.name if p else None for p in after.parts]


def test_shard_versions_a_dead_writer_left_unpublished_are_published_by_the_sweep(tmp_path: Path) -> None:
    store = ShardedStore(tmp_path / "index", S)
    corpus = videos(12, seed=4)
    add(store, corpus[:6])
    first = store.open()
    assert first is not None
    video = corpus[6]
    shard = shard_of(video[0], S)
    add(store.stores[shard], [video])  # the shard's version written, the writer killed before its generation
    assert store.current_name() == first.name
    store.sweep_partial()
    now = store.open()
    assert now is not None and now.number == first.number + 1
    assert video[0] * 100 in now.clip_ids[now.live]


def test_the_layout_is_checked(tmp_path: Path) -> None:
    ShardedStore(tmp_path / "a", 3)
    with pytest.raises(StoreError, match="3 shards, not 4"):
        ShardedStore(tmp_path / "a", 4)
    add(TokenStore(tmp_path / "b"), videos(2))
    with pytest.raises(StoreError, match="unsharded"):
        ShardedStore(tmp_path / "b", 3)
    assert isinstance(open_corpus(DataDir(tmp_path / "c")), TokenStore)
    sharded = open_corpus(DataDir(tmp_path / "d", shards=4))
    assert isinstance(sharded, ShardedStore) and (tmp_path / "d" / "index" / shard_name(3)).is_dir()


def test_a_shard_version_pruned_before_a_replica_opens_it_is_version_gone(tmp_path: Path) -> None:
    """`ShardServer` (the Ray actor's class, plain here): the version a request names was pruned by later writes
    to its shard before the replica opened it: `VersionGone` (the API searches the live generation instead)."""
    from indexer.cluster.ray_serve import ShardServer

    store = ShardedStore(tmp_path / "index", S)
    corpus = videos(30, seed=3)
    add(store, corpus)
    old = store.generation()
    assert old is not None and old.versions[0] is not None
    for video in [v for v, *_ in corpus if shard_of(v, S) == 0][:3]:  # 3 later versions of shard 0: v1 pruned
        store.delete([video * 100 + r for r in range(20)])
    server = ShardServer(str(store.root / shard_name(0)), 0)
    with pytest.raises(VersionGone) as gone:
        server.version(old.versions[0])
    assert (gone.value.shard, gone.value.version) == (0, old.versions[0]) and isinstance(gone.value, StoreError)
    copy = pickle.loads(pickle.dumps(gone.value))  # how a Ray actor's error reaches the searcher
    assert isinstance(copy, VersionGone) and (copy.shard, copy.version) == (0, old.versions[0])
    live = store.generation()
    assert live is not None and live.versions[0] is not None
    opened = store.open(indexes=False)
    assert opened is not None and opened.parts[0] is not None
    assert len(server.version(live.versions[0])) == len(opened.parts[0])
    assert ShardServer(str(store.root / shard_name(1)), 1).version(old.versions[1] or "")  # shard 1 untouched
