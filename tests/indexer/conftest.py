"""Real databases for catalog tests: a fresh SQLite file, and a fresh PostgreSQL database on the
machine's server (127.0.0.1:5432, trust auth), created for the session and dropped after."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from model import CAVMAESync, preset, save_checkpoint

from ..conftest import IN_CI

PG_ADMIN = os.environ.get("CAVSYNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_database() -> Iterator[str]:
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


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        yield from _pg_database()


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
