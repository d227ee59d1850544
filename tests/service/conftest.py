"""API fixtures: a real demo corpus (synthetic clips) indexed with the committed demo checkpoint into a
temp data dir, apps over it (TestClient runs their lifespan), and a set of bad files."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from indexer.store.datadir import DataDir
from service.app import create_app
from service.config import ServiceConfig

from ..model.media_files import ffmpeg

REPO = Path(__file__).resolve().parents[2]
DEMO_CHECKPOINT = REPO / "checkpoints" / "cavsync_tiny_demo.safetensors"
CORPUS_CLIPS, CORPUS_SEED = 24, 7
API_KEY = "test-key-0123"
SHARDS = 3  # the sharded data dir's (tests/service/test_shards*.py)


@dataclass(frozen=True)
class Corpus:
    media: Path  # the media root: synth/ clips and extra/ files indexed by tests
    data: Path  # data dir: index/ and catalog.db
    clips: list[Path]  # the indexed clips, in catalog id order (video id = position + 1)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    from indexer.catalog.tables import open_catalog
    from indexer.ingest.pipeline import Indexer, list_media, model_id_of
    from indexer.store.token_store import TokenStore
    from model import load_model
    from training.synth import generate

    root = tmp_path_factory.mktemp("corpus")
    clips = sorted(generate(root / "media" / "synth", CORPUS_CLIPS, seed=CORPUS_SEED).glob("*.mp4"))
    data = root / "data"
    sessions = open_catalog(f"sqlite:///{data / 'catalog.db'}")
    indexer = Indexer(
        load_model(DEMO_CHECKPOINT),
        model_id_of(DEMO_CHECKPOINT),
        TokenStore(data / "index"),
        sessions,
        workers=1,
        batch_clips=32,
    )
    summary = indexer.index(list_media(root / "media"), show_progress=False)
    assert (summary.indexed, summary.failed) == (CORPUS_CLIPS, 0), summary
    return Corpus(root / "media", data, clips)


@pytest.fixture(scope="session")
def sharded_data(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus's media indexed again, the same way, into SHARDS shards (a fresh catalog: the same video ids).
    Read only: a test that writes copies it."""
    from indexer.catalog.tables import open_catalog
    from indexer.cluster.corpus import ShardedStore
    from indexer.ingest.pipeline import Indexer, list_media, model_id_of
    from model import load_model

    data = tmp_path_factory.mktemp("sharded") / "data"
    indexer = Indexer(
        load_model(DEMO_CHECKPOINT),
        model_id_of(DEMO_CHECKPOINT),
        ShardedStore(data / "index", SHARDS),
        open_catalog(f"sqlite:///{data / 'catalog.db'}"),
        workers=1,
        batch_clips=32,
    )
    summary = indexer.index(list_media(corpus.media), show_progress=False)
    assert summary.failed == 0 and summary.indexed == len(corpus.clips)
    return data


def make_config(corpus: Corpus, data: Path | None = None, **overrides: Any) -> ServiceConfig:
    """The API's config over the corpus (overrides by field name; an api_key string becomes a secret)."""
    if isinstance(overrides.get("api_key"), str):
        overrides["api_key"] = SecretStr(overrides["api_key"])
    overrides["media_roots"] = tuple(overrides.get("media_roots", [corpus.media]))
    data_dir = DataDir(data or corpus.data, shards=overrides.pop("shards", 1))
    return ServiceConfig(model_path=DEMO_CHECKPOINT, data=data_dir, **overrides)


@pytest.fixture(scope="session")
def client(corpus: Corpus) -> Iterator[TestClient]:
    """The read-only app over the shared corpus (tests through it must not change the index)."""
    with TestClient(create_app(make_config(corpus)), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture()
def private_data(corpus: Corpus, tmp_path: Path) -> Path:
    """A copy of the corpus's data dir for a test that writes (delete, index)."""
    return Path(shutil.copytree(corpus.data, tmp_path / "data"))


@pytest.fixture()
def writable_client(corpus: Corpus, private_data: Path) -> Iterator[TestClient]:
    """An app with an API key over a private copy of the data dir."""
    app = create_app(make_config(corpus, private_data, api_key=API_KEY))
    with TestClient(app, raise_server_exceptions=False, headers={"X-API-Key": API_KEY}) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def bad_files(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per class of bad input (and two good single-modality files), by name."""
    folder = tmp_path_factory.mktemp("bad")
    clip = corpus.clips[0]
    files = {
        "zero_bytes": folder / "zero.mp4",
        "random_bytes": folder / "random.mp4",
        "truncated_mp4": folder / "truncated.mp4",
        "text_file": folder / "notes.txt",
        "png_named_mp4": folder / "image.mp4",
        "video_only": folder / "video_only.mp4",
        "audio_only": folder / "audio_only.wav",
        "short_wav": folder / "short.wav",
    }
    files["zero_bytes"].write_bytes(b"")
    files["random_bytes"].write_bytes(np.random.default_rng(0).bytes(50_000))
    data = clip.read_bytes()
    files["truncated_mp4"].write_bytes(data[: len(data) * 4 // 10])
    files["text_file"].write_text("not media, just some words\n" * 200)
    Image.fromarray(np.full((64, 96, 3), 200, np.uint8)).save(files["png_named_mp4"], format="PNG")
    ffmpeg("-i", str(clip), "-an", "-c:v", "copy", str(files["video_only"]))
    ffmpeg("-i", str(clip), "-vn", "-ac", "1", "-ar", "16000", str(files["audio_only"]))
    ffmpeg("-i", str(clip), "-vn", "-ac", "1", "-ar", "16000", "-t", "0.3", str(files["short_wav"]))
    return files


def same_results(got: dict, expected: dict) -> None:
    """Two search answers name the same videos in the same order, scores to 1e-6, the same moments."""
    assert [r["video_id"] for r in got["results"]] == [r["video_id"] for r in expected["results"]]
    np.testing.assert_allclose(
        [r["score"] for r in got["results"]], [r["score"] for r in expected["results"]], atol=1e-6
    )
    for mine, theirs in zip(got["results"], expected["results"], strict=True):
        assert [(m["start"], m["end"]) for m in mine["moments"]] == [(m["start"], m["end"]) for m in theirs["moments"]]


def file_readers(client: TestClient, vid: int) -> list[Any]:
    """Every reader of indexed video `vid`'s file, asked once each: its media (whole and a Range), its poster,
    /localize with its picture and with its sound, and both searches by its id."""
    return [
        client.get(f"/videos/{vid}/media"),
        client.get(f"/videos/{vid}/media", headers={"Range": "bytes=0-99"}),
        client.get(f"/videos/{vid}/poster", params={"time": 1.0}),
        client.post("/localize", data={"video_id": vid, "audio_video_id": 2}),
        client.post("/localize", data={"video_id": 2, "audio_video_id": vid}),
        client.post("/search/audio-to-video", data={"video_id": vid}),
        client.post("/search/video-to-audio", data={"video_id": vid}),
    ]


def upload(path: Path, field: str = "file") -> dict:
    return {field: (path.name, path.read_bytes(), "application/octet-stream")}
