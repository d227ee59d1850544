"""The API over a sharded data dir (CAVSYNC_SHARDS=3), every shard searched in process: the demo corpus indexed
with the real model into 3 shards answers as the single store does, by upload-free queries of every kind; /health
and /metrics per shard; a delete. The same API on a Ray cluster (and a shard with no live replica): test_shards_ray."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexer.cluster.corpus import CorpusVersion
from indexer.cluster.scatter import LocalSearcher, SearchRequest, VersionGone
from indexer.search.moments import TrackHit
from service.app import create_app

from .conftest import API_KEY, SHARDS, Corpus, make_config, same_results

S = SHARDS


@pytest.fixture(scope="module")
def sharded(corpus: Corpus, sharded_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An app (in process: every shard searched here) over a copy of the sharded data dir (a test deletes)."""
    data = Path(shutil.copytree(sharded_data, tmp_path_factory.mktemp("sharded-copy") / "data"))
    app = create_app(make_config(corpus, data, shards=S, api_key=API_KEY))
    with TestClient(app, raise_server_exceptions=False, headers={"X-API-Key": API_KEY}) as test_client:
        yield test_client


def test_the_sharded_api_answers_as_the_single_store(client: TestClient, sharded: TestClient) -> None:
    for video_id in (1, 6, 13, 24):
        for path in ("/search/audio-to-video", "/search/video-to-audio"):
            form = {"video_id": str(video_id), "top_k": "8", "moments": "2"}
            expected, got = client.post(path, data=form), sharded.post(path, data=form)
            assert expected.status_code == got.status_code == 200, got.text
            same_results(got.json(), expected.json())
            assert got.json()["index_version"].startswith("g")  # a generation
    tokens = client.get("/videos/3/embeddings").json()["clips"][0]
    assert sharded.get("/videos/3/embeddings").json()["clips"][0]["visual"] == tokens["visual"]
    for strategy in ("diagonal_mean", "diagonal_max", "mean", "max"):
        body = {"tokens": tokens["audio"][2:9], "target": "visual", "top_k": 6, "strategy": strategy}
        same_results(sharded.post("/search/tokens", json=body).json(), client.post("/search/tokens", json=body).json())


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


class AlwaysGone(LocalSearcher):
    """Every search names a shard 1 version that is not there (what a replica raises for a pruned one, and what
    it would raise again were the live generation pruned too before the retry: the race no test provokes)."""

    def search(self, version: CorpusVersion, query: np.ndarray, request: SearchRequest) -> list[TrackHit]:
        raise VersionGone(1, "v000001")


def test_a_version_still_gone_after_the_reload_is_a_503_naming_the_shard(corpus: Corpus, sharded_data: Path) -> None:
    app = create_app(make_config(corpus, sharded_data, shards=S, retry_after_s=4), searcher=AlwaysGone())
    with TestClient(app, raise_server_exceptions=False) as test_client:
        response = test_client.post("/search/audio-to-video", data={"video_id": "1"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "4", response.text
    assert response.json()["detail"].startswith("shard 1: version v000001 is gone (the index moved on)")


def test_an_index_job_writes_each_new_video_into_its_shard(corpus: Corpus, sharded_data: Path, tmp_path: Path) -> None:
    """POST /index on a sharded data dir (the job's files run through the same task code as a Celery worker's):
    each new video lands in shard shard_of(its id) only, one generation names it, and a search finds it."""
    from indexer.cluster.corpus import ShardedStore, shard_of
    from training.synth import generate

    from .test_catalog import _wait_for_job

    media = generate(tmp_path / "media" / "new", 3, seed=4242)
    data = Path(shutil.copytree(sharded_data, tmp_path / "data"))
    config = make_config(corpus, data, shards=S, api_key=API_KEY, media_roots=[media])
    with TestClient(create_app(config), headers={"X-API-Key": API_KEY}) as client:
        before = client.get("/health").json()["index"]["version"]
        job = _wait_for_job(client, client.post("/index", json={"paths": [str(media)]}).json()["job_id"])
        assert (job["state"], job["done"], job["failed"]) == ("done", 3, 0), job
        items = client.get("/videos", params={"limit": 100}).json()["items"]
        new_ids = sorted(v["id"] for v in items if v["uri"].startswith(str(media)))
        assert len(new_ids) == 3
        version = ShardedStore(data / "index", S).open(indexes=False)
        assert version is not None and version.name != before
        for video_id in new_ids:
            stored = client.get(f"/videos/{video_id}/embeddings").json()["clips"]
            clips = [c["clip_id"] for c in stored]
            holders = [s for s, part in enumerate(version.parts) if part is not None and len(part.rows_of(clips))]
            assert holders == [shard_of(video_id, S)], (video_id, holders)
            tokens = stored[0]["audio"]
            found = client.post("/search/tokens", json={"tokens": tokens, "target": "audio", "top_k": 1}).json()
            assert found["results"][0]["video_id"] == video_id
