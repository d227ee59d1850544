"""The API over a sharded data dir (CAVSYNC_SHARDS=3): the demo corpus indexed with the real model into 3
shards answers as the single store does, by upload-free queries of every kind; /health and /metrics per
shard; a delete; a shard with no live replica is a 503 naming it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexer.moments import TrackHit
from indexer.scatter import LocalSearcher, SearchRequest, ShardUnavailable
from indexer.sharding import CorpusVersion
from service.app import create_app

from .conftest import API_KEY, DEMO_CHECKPOINT, Corpus, make_config

S = 3


@pytest.fixture(scope="module")
def sharded_data(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus's media indexed again, the same way, into 3 shards (a fresh catalog: the same video ids)."""
    from indexer.catalog import open_catalog
    from indexer.pipeline import Indexer, list_media, model_id_of
    from indexer.sharding import ShardedStore
    from model import load_model

    data = tmp_path_factory.mktemp("sharded") / "data"
    indexer = Indexer(
        load_model(DEMO_CHECKPOINT),
        model_id_of(DEMO_CHECKPOINT),
        ShardedStore(data / "index", S),
        open_catalog(f"sqlite:///{data / 'catalog.db'}"),
        workers=1,
        batch_clips=32,
    )
    summary = indexer.index(list_media(corpus.media), show_progress=False)
    assert summary.failed == 0 and summary.indexed == len(corpus.clips)
    return data


@pytest.fixture(scope="module")
def sharded(corpus: Corpus, sharded_data: Path) -> Iterator[TestClient]:
    app = create_app(make_config(corpus, sharded_data, shards=S, api_key=API_KEY))
    with TestClient(app, raise_server_exceptions=False, headers={"X-API-Key": API_KEY}) as test_client:
        yield test_client


def _same(got: dict, expected: dict) -> None:
    assert [r["video_id"] for r in got["results"]] == [r["video_id"] for r in expected["results"]]
    np.testing.assert_allclose(
        [r["score"] for r in got["results"]], [r["score"] for r in expected["results"]], atol=1e-6
    )
    for mine, theirs in zip(got["results"], expected["results"], strict=True):
        assert [(m["start"], m["end"]) for m in mine["moments"]] == [(m["start"], m["end"]) for m in theirs["moments"]]


def test_the_sharded_api_answers_as_the_single_store(client: TestClient, sharded: TestClient) -> None:
    for video_id in (1, 6, 13, 24):
        for path in ("/search/audio-to-video", "/search/video-to-audio"):
            form = {"video_id": str(video_id), "top_k": "8", "moments": "2"}
            expected, got = client.post(path, data=form), sharded.post(path, data=form)
            assert expected.status_code == got.status_code == 200, got.text
            _same(got.json(), expected.json())
            assert got.json()["index_version"].startswith("g")  # a generation
    tokens = client.get("/videos/3/embeddings").json()["clips"][0]
    assert sharded.get("/videos/3/embeddings").json()["clips"][0]["visual"] == tokens["visual"]
    for strategy in ("diagonal_mean", "diagonal_max", "mean", "max"):
        body = {"tokens": tokens["audio"][2:9], "target": "visual", "top_k": 6, "strategy": strategy}
        _same(sharded.post("/search/tokens", json=body).json(), client.post("/search/tokens", json=body).json())


def test_health_and_metrics_per_shard(sharded: TestClient) -> None:
    health = sharded.get("/health").json()
    shards = health["index"]["shards"]
    assert [s["shard"] for s in shards] == list(range(S))
    assert sum(s["clips"] for s in shards) == health["index"]["clips"] > 0
    assert all(s["alive"] == s["replicas"] == 1 and s["version"].startswith("v") for s in shards)
    text = sharded.get("/metrics").text
    assert 'cavsync_shard_clips{shard="2"}' in text and 'cavsync_shard_replicas_alive{shard="0"} 1.0' in text


def test_a_deleted_video_is_never_found_again(sharded: TestClient) -> None:
    form = {"video_id": "9", "top_k": "30"}
    assert 9 in [r["video_id"] for r in sharded.post("/search/audio-to-video", data=form).json()["results"]]
    before = sharded.get("/health").json()["index"]["version"]
    assert sharded.delete("/videos/9").json()["deleted"] is True
    body = {"tokens": sharded.get("/videos/10/embeddings").json()["clips"][0]["audio"], "target": "visual", "top_k": 30}
    answer = sharded.post("/search/tokens", json=body).json()
    assert 9 not in [r["video_id"] for r in answer["results"]] and answer["index_version"] != before


class NoShardTwo(LocalSearcher):
    """Shard 2 has no replica left (what `indexer.cluster.RaySearcher` raises then)."""

    def search(self, version: CorpusVersion, query: np.ndarray, request: SearchRequest) -> list[TrackHit]:
        raise ShardUnavailable(2, "ActorDiedError: its node was removed", retry_after_s=3)


def test_a_shard_without_a_live_replica_is_a_503_naming_it(corpus: Corpus, sharded_data: Path) -> None:
    app = create_app(make_config(corpus, sharded_data, shards=S), searcher=NoShardTwo())
    with TestClient(app, raise_server_exceptions=False) as test_client:
        response = test_client.post("/search/audio-to-video", data={"video_id": "1"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "3"
    assert "shard 2 has no live replica" in response.json()["detail"]
