"""Shared test fixtures: paths to the shared reference files, seeded tiny models, real databases (a fresh
PostgreSQL database on the machine's server, 127.0.0.1:5432, trust auth), a small media corpus, GPU marker."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from model import CAVMAESync, preset, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAVSYNC_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_file(path: Path) -> Path:
    """The shared reference files are part of CI's checkout: missing there is a failure, not a skip."""
    if not path.exists():
        if IN_CI:
            pytest.fail(f"required reference file missing in CI: {path}")
        pytest.skip(f"reference file not available: {path}")
    return path


@pytest.fixture(scope="session")
def golden_tiny() -> dict:
    return torch.load(require_file(REFERENCE / "golden_model_tiny.pt"), weights_only=True)


@pytest.fixture(scope="session")
def official_base_names() -> dict[str, tuple[int, ...]]:
    text = require_file(REFERENCE / "official_state_dict_base.txt").read_text()
    names = {}
    for line in text.splitlines():
        name, shape = line.split(" ", 1)
        names[name] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return names


PG_ADMIN = os.environ.get("CAVSYNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_database() -> Iterator[str]:
    import psycopg

    name = f"cavsync_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI and is not reachable: {exc}")
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def redis_db(url: str) -> Iterator[str]:
    """A Redis database of the machine's server (emptied before and after); fails in CI when unreachable."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        if IN_CI:
            pytest.fail(f"Redis is required in CI and is not reachable: {exc}")
        pytest.skip(f"Redis not reachable: {exc}")
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped after the test."""
    yield from pg_database()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)
    return save_checkpoint(
        CAVMAESync(preset("tiny", modality_depth=1)), tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    )


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.synth import generate

    folder = generate(tmp_path_factory.mktemp("media"), 10, seed=21)
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    return folder


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def lying_bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bombs the header read in Python passes (tests/bombs.py), made once per session (~2 s): a 16000x16000
    H.264 mp4 whose header says 64x64, and a 20001x13000 PNG (hachoir drops the width)."""
    from .bombs import lying_h264_mp4, png_bomb

    folder = tmp_path_factory.mktemp("lying-bombs")
    return {"mp4": lying_h264_mp4(folder / "lying.mp4"), "png": png_bomb(folder / "wide.png", 20001, 13000)}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local Ray cluster of 3 nodes for one test module (tests/ray_cluster.py; ray is imported only here)."""
    from .ray_cluster import local_cluster

    with local_cluster() as cluster:
        yield cluster
