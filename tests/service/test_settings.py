"""Settings from CAVSYNC_* variables, and the inference slots on their own."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from service.engine import InferenceSlots
from service.errors import Busy
from service.settings import Settings, catalog_url


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("CAVSYNC_")]:
        monkeypatch.delenv(name)
    defaults = Settings()
    assert defaults.model_path == Path("checkpoints/cavsync_tiny_demo.safetensors")
    assert defaults.index_dir == Path("data/index") and defaults.catalog_url == catalog_url(Path("data"), None)
    assert defaults.catalog_url == f"sqlite:///{(Path('data') / 'catalog.db').resolve()}"  # what `cavsync index` uses
    assert defaults.api_key is None and defaults.media_roots == [] and defaults.broker_url is None
    monkeypatch.setenv("CAVSYNC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CAVSYNC_MEDIA_ROOTS", '["/media/a", "/media/b"]')
    monkeypatch.setenv("CAVSYNC_CORS_ORIGINS", "http://a.example, http://b.example")
    monkeypatch.setenv("CAVSYNC_API_KEY", "")  # docker compose's `${CAVSYNC_API_KEY:-}`: no key
    monkeypatch.setenv("CAVSYNC_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("CAVSYNC_MAX_UPLOAD_BYTES", "1000")
    settings = Settings()
    assert settings.index_dir == tmp_path / "index" and settings.uploads_dir == tmp_path / "uploads"
    assert settings.media_roots == [Path("/media/a"), Path("/media/b")]
    assert settings.cors_origins == ["http://a.example", "http://b.example"]
    assert settings.api_key is None and settings.broker_url == "redis://redis:6379/0"
    assert settings.max_upload_bytes == 1000
    monkeypatch.setenv("CAVSYNC_MEDIA_ROOTS", "/media/a,/media/c")
    monkeypatch.setenv("CAVSYNC_API_KEY", "secret")
    monkeypatch.setenv("CAVSYNC_DATABASE_URL", "postgresql+psycopg://u@db/cavsync")
    settings = Settings()
    assert settings.media_roots == [Path("/media/a"), Path("/media/c")]
    assert settings.api_key.get_secret_value() == "secret" and "secret" not in repr(settings)
    assert settings.catalog_url == "postgresql+psycopg://u@db/cavsync"


def test_slots_wait_then_answer_busy() -> None:
    async def scenario() -> None:
        slots = InferenceSlots(1, wait_s=0.3, retry_after_s=2)
        async with slots.hold():
            start = time.perf_counter()
            with pytest.raises(Busy) as busy:
                async with slots.hold():
                    pass
            assert time.perf_counter() - start >= 0.25 and busy.value.headers == {"Retry-After": "2"}
        async with anyio.create_task_group() as group:  # a slot freed within the wait is taken
            group.start_soon(_hold_for, slots, 0.1)
            await anyio.sleep(0.02)
            assert slots.in_use == 1
            async with slots.hold():
                assert slots.in_use == 1
        assert slots.in_use == 0

    anyio.run(scenario)


async def _hold_for(slots: InferenceSlots, seconds: float) -> None:
    async with slots.hold():
        await anyio.sleep(seconds)


def test_no_wait_answers_busy_at_once() -> None:
    async def scenario() -> None:
        slots = InferenceSlots(2, wait_s=0.0, retry_after_s=1)
        async with slots.hold(), slots.hold():
            assert slots.in_use == 2
            with pytest.raises(Busy):
                async with slots.hold():
                    pass
        assert slots.in_use == 0
        with pytest.raises(Busy):
            async with InferenceSlots(0, 5.0, 1).hold():
                pass

    anyio.run(scenario)
