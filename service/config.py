"""What the API is built from: one frozen dataclass, filled by the composition root (`cavsync`), which reads
the `CAVSYNC_*` settings. The service itself reads no environment.

The data dir has the layout `cavsync index` uses (`indexer.store.datadir.DataDir`, the `data` field, built once by
the composition root: `cavsync.settings.Settings.data`): the token store and its shard count, the SQLite catalog
unless a database URL is given, the API's uploads for indexing, its poster cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from pydantic import SecretStr

from indexer.jobs.leases import LeaseConfig
from indexer.jobs.supervisor import SupervisorConfig
from indexer.search.stage import FirstStage
from indexer.store.datadir import DataDir

# Which routes need the API key: `writes` (POST /index, DELETE) or `all` (every route but /health, the page's
# files and the docs: service/access.py).
ApiAccess = Literal["writes", "all"]
ACCESS_WITHOUT_KEY = "CAVSYNC_API_ACCESS=all needs CAVSYNC_API_KEY: set a key, or CAVSYNC_API_ACCESS=writes"


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the API needs to start. Field names are those of the settings (`CAVSYNC_<NAME>`), so an
    error can name the setting that changes a value; `data` is the data dir's layout (`CAVSYNC_DATA_DIR`,
    `CAVSYNC_DATABASE_URL`, `CAVSYNC_SHARDS`)."""

    model_path: Path  # our .safetensors or an official .pth
    data: DataDir = DataDir(Path("data"))  # token store (index/, its shards), SQLite catalog or the URL, uploads
    broker_url: str | None = None  # Celery broker; None: index jobs run in the API process
    queue: str = "cavsync"  # the broker queue the index tasks go to (the workers' task_default_queue)
    media_roots: tuple[Path, ...] = ()  # folders whose files POST /index may index by path
    max_upload_bytes: int = 512 * 2**20  # largest request body (uploads included)
    max_media_duration_s: float = 3600.0  # longest media a query or an upload may be
    max_query_s: float = 180.0  # longest query (s); an upload up to 1 s longer is cut to it
    max_concurrent_inferences: int = 4  # inferences at once; more get 503
    inference_wait_s: float = 0.0  # how long a request waits for a free inference slot
    retry_after_s: int = 1  # Retry-After of a 503 answer
    api_key: SecretStr | None = field(default=None, repr=False)  # when set, write endpoints need X-API-Key
    api_access: ApiAccess = "writes"  # `all`: reads need the key too (which must then be set)
    wrong_keys_per_minute: int = 10  # wrong keys one address may send in a minute; then 429 (service/access.py)
    cors_origins: tuple[str, ...] = ()
    device: str | None = None  # torch device of the model (default: cuda when available)
    leases: LeaseConfig = LeaseConfig()  # index job files: lease, queue wait, dispatches before failing
    search: FirstStage = FirstStage()  # how searches find their candidates (CAVSYNC_SEARCH_*)
    reconcile_interval_s: float = 15.0  # how often lost files of index jobs are looked for (and at start)
    shutdown_grace_s: float = 10.0  # how long stopping waits for the file being indexed in process
    max_pixels: int | None = 36_000_000  # largest frame (width x height) decoded: a bomb gets 413 at probe
    max_frames: int | None = 1_000_000  # most frames of a video decoded

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.get_secret_value().strip():
            raise ValueError("api_key (CAVSYNC_API_KEY) is blank: set a real key, or None to run without one")
        if self.api_access not in get_args(ApiAccess):
            raise ValueError(f"api_access (CAVSYNC_API_ACCESS) is {self.api_access!r}: 'writes' or 'all'")
        if self.api_access == "all" and self.api_key is None:
            raise ValueError(ACCESS_WITHOUT_KEY)

    @property
    def data_dir(self) -> Path:
        """The data dir's root (`CAVSYNC_DATA_DIR`)."""
        return self.data.root

    @property
    def catalog_url(self) -> str:
        return self.data.catalog_url

    @property
    def jobs(self) -> SupervisorConfig:
        """What the index jobs' supervisor needs."""
        return SupervisorConfig(
            self.model_path, self.data, self.leases, self.reconcile_interval_s, self.shutdown_grace_s
        )
