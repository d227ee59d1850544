"""The API on the Ray path, end to end: `cavsync.app.build_app` from `Settings` with a cluster address (a local
3-node Ray cluster, tests/ray_cluster.py) over the demo corpus indexed with the real model into 3 shards. HTTP
searches (by stored video, both directions, by upload, by tokens) answer as the single-store app; a generation
pruned before the replicas opened it is searched again at the live one; both replicas of a shard ended for good:
503 with Retry-After naming it, /health degraded naming it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
from fastapi.testclient import TestClient

from cavsync.app import build_app
from cavsync.settings import Settings
from indexer.cluster.corpus import ShardedStore, ShardedVersion, shard_of
from indexer.cluster.ray_serve import RaySearcher
from indexer.cluster.scatter import LocalSearcher, SearchRequest
from service.engine import Engine

from ..indexer.shard_corpus import assert_same_hits
from ..ray_cluster import RESOURCE, LocalCluster
from .conftest import DEMO_CHECKPOINT, SHARDS, Corpus, same_results, upload

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]

RETRY_AFTER = 2
SEARCHES = ("/search/audio-to-video", "/search/video-to-audio")


@pytest.fixture(scope="module")
def on_ray(
    corpus: Corpus, sharded_data: Path, ray_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """The app `cavsync serve` builds with CAVSYNC_CLUSTER_ADDRESS, over a copy of the sharded data dir."""
    data = Path(shutil.copytree(sharded_data, tmp_path_factory.mktemp("on-ray") / "data"))
    settings = Settings(
        model_path=DEMO_CHECKPOINT,
        data_dir=data,
        database_url=None,
        broker_url=None,
        api_key=None,
        media_roots=[corpus.media],
        shards=SHARDS,
        cluster_address=ray_cluster.address,
        replicas=2,
        shard_resource=RESOURCE,
        shard_timeout_s=60,
        retry_after_s=RETRY_AFTER,
    )
    with TestClient(build_app(settings), raise_server_exceptions=False) as client:
        yield client


def _engine(client: TestClient) -> Engine:
    engine = client.app.state.engine  # type: ignore[attr-defined]  # the FastAPI app build_app made
    assert isinstance(engine, Engine) and isinstance(engine.searcher, RaySearcher)
    return engine


def _searcher(client: TestClient) -> RaySearcher:
    searcher = _engine(client).searcher
    assert isinstance(searcher, RaySearcher)
    return searcher


def test_the_api_on_ray_answers_as_the_single_store(client: TestClient, on_ray: TestClient, corpus: Corpus) -> None:
    assert _searcher(on_ray).wait_ready(120)
    health = on_ray.get("/health").json()
    shards = health["index"]["shards"]
    assert health["status"] == "ok" and [s["alive"] for s in shards] == [2] * SHARDS
    assert all(len(set(s["nodes"])) == 2 for s in shards)  # each shard's replicas on two nodes
    for video_id in (1, 6, 13, 24):
        for path in SEARCHES:
            form = {"video_id": str(video_id), "top_k": "8", "moments": "2"}
            expected, got = client.post(path, data=form), on_ray.post(path, data=form)
            assert expected.status_code == got.status_code == 200, got.text
            same_results(got.json(), expected.json())
            assert got.json()["index_version"] == health["index"]["version"]
    for path in SEARCHES:  # an upload: encoded by the API, searched on the replicas
        form = {"top_k": "6", "strategy": "diagonal_max"}
        expected = client.post(path, data=form, files=upload(corpus.clips[4]))
        got = on_ray.post(path, data=form, files=upload(corpus.clips[4]))
        assert expected.status_code == got.status_code == 200, got.text
        same_results(got.json(), expected.json())
    tokens = client.get("/videos/3/embeddings").json()["clips"][0]["audio"][2:9]
    for strategy in ("mean", "max"):
        body = {"tokens": tokens, "target": "visual", "top_k": 6, "strategy": strategy}
        same_results(on_ray.post("/search/tokens", json=body).json(), client.post("/search/tokens", json=body).json())


def test_a_generation_pruned_before_the_replicas_opened_it_is_searched_again_live(on_ray: TestClient) -> None:
    """Deletes move shard 0 on by 3 versions while a request holds a generation no replica opened yet: the
    engine gets `VersionGone`, loads the live generation and answers from it (not a 500)."""
    engine = _engine(on_ray)
    store = engine.store
    assert isinstance(store, ShardedStore)
    doomed = [v for v in range(2, 25) if v != 6 and shard_of(v, SHARDS) == 0][:4]
    assert len(doomed) == 4
    assert on_ray.delete(f"/videos/{doomed[0]}").json()["deleted"] is True
    held = engine.reload()  # the generation the request holds; no replica has opened its shard 0 version
    assert held is not None
    for video in doomed[1:]:
        assert on_ray.delete(f"/videos/{video}").json()["deleted"] is True
    assert isinstance(held, ShardedVersion)
    assert not (store.stores[0].root / "versions" / str(held.generation.versions[0])).exists()  # pruned
    tokens = np.asarray(on_ray.get("/videos/6/embeddings").json()["clips"][0]["audio"], np.float32)
    request = SearchRequest("visual", k=8, moment_from="audio")
    searched = engine.search(held, tokens, request)
    live = store.open()
    assert live is not None and searched.version.name == live.name != held.name
    assert_same_hits(searched.hits, LocalSearcher().search(live, tokens, request))
    found = on_ray.post("/search/audio-to-video", data={"video_id": "6", "top_k": "30"}).json()
    assert not set(doomed) & {r["video_id"] for r in found["results"]} and found["index_version"] == live.name


def test_a_shard_without_a_live_replica_is_a_503_naming_it(on_ray: TestClient) -> None:
    """Last in the module: it ends both replicas of shard 1 for good (ray.kill, no restart)."""
    searcher = _searcher(on_ray)
    assert on_ray.get("/health").json()["index"]["shards"][1]["clips"] > 0
    for actor in searcher.actors[1]:
        ray.kill(actor, no_restart=True)
    response = on_ray.post("/search/audio-to-video", data={"video_id": "1"})
    assert response.status_code == 503 and response.headers["Retry-After"] == str(RETRY_AFTER), response.text
    assert "shard 1 has no live replica" in response.json()["detail"]
    health = on_ray.get("/health").json()
    assert health["status"] == "degraded"
    assert [(s["shard"], s["alive"]) for s in health["index"]["shards"]] == [(0, 2), (1, 0), (2, 2)]
    assert health["index"]["shards"][1]["unavailable"] == 1
    metrics = on_ray.get("/metrics").text
    assert 'cavsync_shard_replicas_alive{shard="1"} 0.0' in metrics
    assert 'cavsync_shard_unavailable{shard="1"} 1.0' in metrics
