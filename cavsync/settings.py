"""The one settings class: every `CAVSYNC_*` environment variable is read here and nowhere else.

The composition root (`cavsync.cli`, `cavsync.worker`, `cavsync.app`) reads `Settings()` and hands the
libraries what they need as plain values or frozen configs (`service.ServiceConfig`, `indexer.store.datadir.DataDir`,
`cavsync.worker.broker`,
`model.media.use_ffmpeg`). Lists (`CAVSYNC_MEDIA_ROOTS`, `CAVSYNC_CORS_ORIGINS`) are a JSON list or
comma-separated. The default model is the demo checkpoint of this repository, found relative to the installed
package (not the working directory).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:  # imported where used: reading the settings (`cavsync -h`) loads no library
    from indexer.cluster.ray_serve import ClusterConfig
    from indexer.jobs.leases import LeaseConfig
    from indexer.search.stage import FirstStage
    from indexer.store.datadir import DataDir
    from service.config import ServiceConfig

REPO = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = REPO / "checkpoints" / "cavsync_tiny_demo.safetensors"
ENV_PREFIX = "CAVSYNC_"


def env_name(field: str) -> str:
    """The environment variable of a settings field (`media_roots` -> `CAVSYNC_MEDIA_ROOTS`)."""
    return ENV_PREFIX + field.upper()


class Settings(BaseSettings):
    """Everything the API, the workers and the command line configure; every field is `CAVSYNC_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", protected_namespaces=())

    model_path: Path = Field(DEMO_CHECKPOINT, description="Model checkpoint (.safetensors or official .pth).")
    data_dir: Path = Field(Path("data"), description="Token store (index/), SQLite catalog, uploads.")
    database_url: str | None = Field(None, description="SQLAlchemy URL of the catalog (default: SQLite).")
    broker_url: str | None = Field(None, description="Celery broker; unset: index jobs run in the API process.")
    media_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="Folders whose files POST /index may index by path."
    )
    max_upload_bytes: int = Field(512 * 2**20, ge=0, description="Largest request body (uploads included).")
    max_media_duration_s: float = Field(3600.0, gt=0, description="Longest media a query or an upload may be.")
    max_query_s: float = Field(
        180.0,
        gt=0,
        description="Longest query, seconds: one token per 0.64 s, every one used; an upload up to 1 s longer "
        "is cut to it, a longer one refused.",
    )
    max_concurrent_inferences: int = Field(4, ge=0, description="Inferences at once; more get 503.")
    inference_wait_s: float = Field(0.0, ge=0, description="How long a request waits for a free inference slot.")
    retry_after_s: int = Field(1, ge=0, description="Retry-After of a 503 answer.")
    api_key: SecretStr | None = Field(None, description="When set, write endpoints need the X-API-Key header.")
    api_access: Literal["writes", "all"] = Field(
        "writes",
        description="Which routes need the API key: `writes` (POST /index, DELETE) or `all` (every route but "
        "/health, the page's files and the docs; needs CAVSYNC_API_KEY).",
    )
    wrong_keys_per_minute: int = Field(
        10, ge=1, description="Wrong API keys one address may send in a minute; more answer 429 until it passes."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Allowed CORS origins.")
    device: str | None = Field(None, description="torch device of the model (default: cuda when available).")
    ffmpeg: str | None = Field(None, description="ffmpeg binary (default: the system one, else imageio-ffmpeg's).")
    # Celery: the longest a task may run, and how long the broker waits before handing the task of a worker that
    # died to another one (above the longest task: a task still running when it expires runs twice, which
    # idempotency makes harmless but wasteful).
    task_time_limit_s: int = Field(1800, gt=0, description="Longest an index task may run.")
    visibility_timeout_s: int | None = Field(
        None, gt=0, description="Redelivery delay of a dead worker's task (default: 2 x task_time_limit_s)."
    )
    broker_timeout_s: float = Field(
        5.0, gt=0, description="Connecting to the broker and each command on it (a publish) give up after this."
    )
    merge_lock_ttl_s: float = Field(30.0, gt=0, description="A dead merger's lock frees this soon.")
    queue: str = Field("cavsync", min_length=1, description="Celery queue of the index tasks (one per deployment).")
    # Leases (indexer.jobs.leases): a file being indexed is renewed every third of lease_s; a lease that expires
    # (its worker, the API or the broker died) is dispatched again by the API's reconciler, which runs at start
    # and every reconcile_interval_s, up to max_dispatches times, then the file fails with what to do.
    lease_s: float = Field(60.0, gt=0, description="Lease of a file being indexed; lost this long after its worker.")
    queue_lease_s: float = Field(
        900.0, gt=0, description="How long a file may wait in the broker's queue before it is sent again."
    )
    reconcile_interval_s: float = Field(15.0, gt=0, description="How often the API looks for lost files.")
    max_dispatches: int = Field(3, ge=1, description="Times a lost file is sent again before it fails.")
    shutdown_grace_s: float = Field(10.0, ge=0, description="How long stopping waits for the file being indexed.")
    max_pixels: int = Field(36_000_000, gt=0, description="Largest frame (width x height) decoded; more: 413.")
    max_frames: int = Field(1_000_000, gt=0, description="Most frames of a video decoded; more: 413.")
    # How a search finds its candidates (indexer.search.ranking.FirstStage; BENCHMARKS.md, issue 30).
    search_scheme: str = Field(
        "auto",
        description="Candidate scheme: auto (exhaustive for small stores, else votes), exhaustive, votes, or scan "
        "(reads every token: the exact reference, seconds per long query on a large store).",
    )
    search_probes: int = Field(16, ge=1, description="Query frames that probe the FAISS index (spread over it).")
    search_per_frame: int = Field(2048, ge=1, description="Nearest stored frames each probing frame finds.")
    search_hypotheses: int = Field(1024, ge=1, description="Best-voted (video, offset) hypotheses scored roughly.")
    # Shards (indexer.cluster.corpus) and the Ray cluster that serves them (indexer.cluster.ray_serve). shards=1
    # and no cluster address: one token store searched in the API process, as before shards. The API, the workers
    # and the command line must use one shard count (a store written with another is refused).
    shards: int = Field(1, ge=1, le=4096, description="Shards of the token store (index/shard-NN/ when > 1).")
    cluster_address: str | None = Field(
        None, description="Ray cluster serving the shards ('auto', 'host:6379', 'ray://host:10001'); unset: in process."
    )
    replicas: int = Field(2, ge=1, description="Replicas of each shard on the Ray cluster.")
    cluster_index_dir: Path | None = Field(
        None, description="The index/ folder as the cluster's nodes see it (default: the data dir's index/)."
    )
    shard_resource: str = Field("cavsync_shard", min_length=1, description="Ray resource a shard replica takes.")
    shard_gpus: float = Field(0.0, ge=0, description="GPUs per shard replica (FAISS on the GPU when > 0).")
    shard_timeout_s: float = Field(30.0, gt=0, description="A replica slower than this is given up for another.")

    @field_validator("media_roots", "cors_origins", mode="before")
    @classmethod
    def _list(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]

    @field_validator("search_scheme")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        from indexer.search.stage import SCHEMES  # the schemes' one declaration; `cavsync -h` loads no library

        if value not in SCHEMES:
            raise ValueError(f"is not a search scheme: choose one of {', '.join(SCHEMES)}")
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _no_blank_key(cls, value: object) -> object:
        """A blank key (empty, or only whitespace) looks like a key and protects nothing: refused at start. To run
        without a key, leave CAVSYNC_API_KEY unset (compose passes it through only when the shell sets it)."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str) and not text.strip():
            raise ValueError("is blank: set a real key, or unset CAVSYNC_API_KEY to run without one")
        return value

    @field_validator("api_access", mode="before")
    @classmethod
    def _blank_access_is_writes(cls, value: object) -> object:
        """Set but empty (compose's `${CAVSYNC_BIND:+all}` with CAVSYNC_BIND unset) is the default."""
        return "writes" if isinstance(value, str) and not value.strip() else value

    @field_validator("api_access")
    @classmethod
    def _all_needs_a_key(cls, value: str, info: ValidationInfo) -> str:
        """`all` without a key would claim to protect reads and protect nothing: refused at start, naming both
        variables (a field error, so that the command line names CAVSYNC_API_ACCESS)."""
        if value == "all" and info.data.get("api_key") is None:
            raise ValueError("CAVSYNC_API_ACCESS=all needs CAVSYNC_API_KEY: set a key, or CAVSYNC_API_ACCESS=writes")
        return value

    @field_validator("database_url", "broker_url", "ffmpeg", "cluster_address", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _renewed_within_lease(self) -> Settings:
        if self.reconcile_interval_s >= self.lease_s:
            raise ValueError(
                f"CAVSYNC_RECONCILE_INTERVAL_S={self.reconcile_interval_s} must be under CAVSYNC_LEASE_S="
                f"{self.lease_s} (the API renews the leases of the jobs it runs at that pace)"
            )
        return self

    @model_validator(mode="after")
    def _visibility_above_task_limit(self) -> Settings:
        if self.visibility_timeout_s is None:
            self.visibility_timeout_s = 2 * self.task_time_limit_s
        return self

    def service_config(self) -> ServiceConfig:
        """The frozen config of the API; its `data` is the data dir's layout every command uses (`data()`)."""
        from service.config import ServiceConfig

        names = [f.name for f in dataclasses.fields(ServiceConfig) if f.name not in ("leases", "data", "search")]
        values = {name: getattr(self, name) for name in names}  # the same names
        values |= {"media_roots": tuple(self.media_roots), "cors_origins": tuple(self.cors_origins)}
        return ServiceConfig(**values, data=self.data(), leases=self.leases(), search=self.search())

    def search(self) -> FirstStage:
        """How searches find their candidates (`CAVSYNC_SEARCH_*`)."""
        from indexer.search.stage import FirstStage, Scheme

        return FirstStage(
            scheme=cast(Scheme, self.search_scheme),  # one of SCHEMES (`_known_scheme`)
            probes=self.search_probes,
            per_frame=self.search_per_frame,
            hypotheses=self.search_hypotheses,
        )

    def data(self) -> DataDir:
        """The data dir's layout (the catalog's URL, the token store's shard count) every command, the API and the
        workers use: built here and passed down (`CAVSYNC_SHARDS` reaches them only in it)."""
        from indexer.store.datadir import DataDir

        return DataDir(self.data_dir, self.database_url, self.shards)

    def cluster(self) -> ClusterConfig | None:
        """The Ray cluster serving the shards, None without `cluster_address` (searches run in the API)."""
        if self.cluster_address is None:
            return None
        from indexer.cluster.ray_serve import ClusterConfig

        return ClusterConfig(
            address=self.cluster_address,
            index_root=(self.cluster_index_dir or self.data().index).resolve(),
            shards=self.shards,
            replicas=self.replicas,
            resource=self.shard_resource,
            gpus_per_replica=self.shard_gpus,
            call_timeout_s=self.shard_timeout_s,
            retry_after_s=self.retry_after_s,
        )

    def leases(self) -> LeaseConfig:
        from indexer.jobs.leases import LeaseConfig

        return LeaseConfig(self.lease_s, self.queue_lease_s, self.max_dispatches)
