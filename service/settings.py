"""The service's settings: one pydantic-settings class, read from `CAVSYNC_*` environment variables.

The data dir has the layout `cavsync index` uses: the token store in `<data_dir>/index`, the SQLite
catalog in `<data_dir>/catalog.db` unless a database URL is given, and (the API's own) uploads for
indexing in `<data_dir>/uploads`. Lists (`CAVSYNC_MEDIA_ROOTS`, `CAVSYNC_CORS_ORIGINS`) are a JSON
list or comma-separated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = Path("checkpoints/cavsync_tiny_demo.safetensors")


def catalog_url(data_dir: Path, database_url: str | None) -> str:
    """The catalog's SQLAlchemy URL: the given one, else SQLite at `<data_dir>/catalog.db`."""
    return database_url or f"sqlite:///{(data_dir / 'catalog.db').resolve()}"


class Settings(BaseSettings):
    """Everything the API needs to start; every field is `CAVSYNC_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="CAVSYNC_", extra="ignore", protected_namespaces=())

    model_path: Path = Field(DEFAULT_MODEL, description="Model checkpoint (.safetensors or official .pth).")
    data_dir: Path = Field(Path("data"), description="Token store (index/), SQLite catalog, uploads.")
    database_url: str | None = Field(None, description="SQLAlchemy URL of the catalog (default: SQLite).")
    broker_url: str | None = Field(None, description="Celery broker; unset: index jobs run in the API process.")
    media_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="Folders whose files POST /index may index by path."
    )
    max_upload_bytes: int = Field(512 * 2**20, ge=0, description="Largest request body (uploads included).")
    max_media_duration_s: float = Field(3600.0, gt=0, description="Longest media a query or an upload may be.")
    max_query_s: float = Field(60.0, gt=0, description="Longest audio query decoded (its first clip is used).")
    max_concurrent_inferences: int = Field(4, ge=0, description="Inferences at once; more get 503.")
    inference_wait_s: float = Field(0.0, ge=0, description="How long a request waits for a free inference slot.")
    retry_after_s: int = Field(1, ge=0, description="Retry-After of a 503 answer.")
    api_key: SecretStr | None = Field(None, description="When set, write endpoints need the X-API-Key header.")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Allowed CORS origins.")
    device: str | None = Field(None, description="torch device of the model (default: cuda when available).")

    @field_validator("media_roots", "cors_origins", mode="before")
    @classmethod
    def _list(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]

    @field_validator("api_key", "database_url", "broker_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def catalog_url(self) -> str:
        return catalog_url(self.data_dir, self.database_url)
