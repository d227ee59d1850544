"""Settings from CAVSYNC_* variables: the one place the environment is read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from cavsync.settings import DEMO_CHECKPOINT, Settings
from indexer.store.datadir import catalog_url


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("CAVSYNC_")]:
        monkeypatch.delenv(name)
    defaults, paths = Settings(), Settings().service_config()
    assert defaults.model_path == DEMO_CHECKPOINT and DEMO_CHECKPOINT.is_file()  # found wherever we run
    assert defaults.task_time_limit_s == 1800 and defaults.visibility_timeout_s == 3600  # twice the task limit
    assert paths.data.index == Path("data/index") == defaults.data().index and paths.catalog_url == catalog_url(
        Path("data"), None
    )
    assert paths.catalog_url == f"sqlite:///{(Path('data') / 'catalog.db').resolve()}"  # what `cavsync index` uses
    assert defaults.api_key is None and defaults.media_roots == [] and defaults.broker_url is None
    monkeypatch.setenv("CAVSYNC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CAVSYNC_MEDIA_ROOTS", '["/media/a", "/media/b"]')
    monkeypatch.setenv("CAVSYNC_CORS_ORIGINS", "http://a.example, http://b.example")
    monkeypatch.setenv("CAVSYNC_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("CAVSYNC_MAX_UPLOAD_BYTES", "1000")
    settings = Settings()
    config = settings.service_config()  # what the API is built from: the same values, frozen
    assert config.data.index == tmp_path / "index" and config.data.uploads == tmp_path / "uploads"
    assert settings.media_roots == [Path("/media/a"), Path("/media/b")]
    assert settings.cors_origins == ["http://a.example", "http://b.example"]
    assert settings.api_key is None and settings.broker_url == "redis://redis:6379/0"
    assert settings.max_upload_bytes == 1000
    assert config.media_roots == (Path("/media/a"), Path("/media/b")) and config.max_upload_bytes == 1000
    assert config.broker_url == settings.broker_url
    monkeypatch.setenv("CAVSYNC_MEDIA_ROOTS", "/media/a,/media/c")
    monkeypatch.setenv("CAVSYNC_API_KEY", "secret")
    monkeypatch.setenv("CAVSYNC_DATABASE_URL", "postgresql+psycopg://u@db/cavsync")
    settings = Settings()
    assert settings.media_roots == [Path("/media/a"), Path("/media/c")]
    assert settings.api_key.get_secret_value() == "secret" and "secret" not in repr(settings)
    assert settings.service_config().catalog_url == "postgresql+psycopg://u@db/cavsync"


def test_api_access_is_writes_by_default_and_all_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """CAVSYNC_API_ACCESS: `writes` (reads open, the default) or `all` (every route but /health needs the key);
    `all` without CAVSYNC_API_KEY is an error at start that names both variables."""
    for name in [n for n in os.environ if n.startswith("CAVSYNC_")]:
        monkeypatch.delenv(name)
    assert Settings().api_access == "writes" and Settings().service_config().api_access == "writes"
    monkeypatch.setenv("CAVSYNC_API_ACCESS", " ")  # set but empty (docker-compose.yml on loopback): the default
    assert Settings().api_access == "writes"
    monkeypatch.setenv("CAVSYNC_API_ACCESS", "all")
    with pytest.raises(ValidationError, match=r"CAVSYNC_API_ACCESS=all needs CAVSYNC_API_KEY") as refused:
        Settings()
    assert [e["loc"] for e in refused.value.errors()] == [("api_access",)]  # the command line names the variable
    monkeypatch.setenv("CAVSYNC_API_KEY", "secret")
    config = Settings().service_config()
    assert config.api_access == "all" and config.api_key is not None
    monkeypatch.setenv("CAVSYNC_API_ACCESS", "everything")
    with pytest.raises(ValidationError, match="'writes' or 'all'"):
        Settings()


def test_the_search_first_stage_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CAVSYNC_SEARCH_* reach the API's config (every search request carries them); an unknown scheme is refused."""
    from indexer.search.stage import FirstStage

    for name in [n for n in os.environ if n.startswith("CAVSYNC_")]:
        monkeypatch.delenv(name)
    assert Settings().service_config().search == FirstStage()
    monkeypatch.setenv("CAVSYNC_SEARCH_SCHEME", "scan")
    monkeypatch.setenv("CAVSYNC_SEARCH_PROBES", "8")
    monkeypatch.setenv("CAVSYNC_SEARCH_PER_FRAME", "256")
    monkeypatch.setenv("CAVSYNC_SEARCH_HYPOTHESES", "64")
    assert Settings().service_config().search == FirstStage("scan", probes=8, per_frame=256, hypotheses=64)
    monkeypatch.setenv("CAVSYNC_SEARCH_SCHEME", "fastest")
    with pytest.raises(ValidationError, match="is not a search scheme: choose one of auto, exhaustive, votes, scan"):
        Settings()
    monkeypatch.setenv("CAVSYNC_SEARCH_SCHEME", "votes")
    monkeypatch.setenv("CAVSYNC_SEARCH_PROBES", "0")
    with pytest.raises(ValidationError, match="search_probes"):
        Settings()
