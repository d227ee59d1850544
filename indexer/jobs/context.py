"""What an index task is given, and what it holds open while it runs.

`TaskContext` is what the composition root (`cavsync.worker`, the supervisor) knows of a task: the model's path,
the data dir (a `DataDir`, built once by the root), the job, the leases and the broker. Its `message` is what
crosses the broker: plain strings (`indexer.jobs.broker.TaskMessage`). `Resources` is what a process keeps
between tasks (one model per checkpoint, one session factory per catalog). `TaskRun` is one run's context: the
catalog's session factory opened once, the model's id looked up once when first asked, the model loaded on first use;
every function of a task takes it.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog.tables import open_catalog
from indexer.ingest.pipeline import model_id_of
from indexer.jobs.broker import Broker, TaskMessage
from indexer.store.datadir import DataDir
from model import CAVMAESync, load_model


@dataclass(frozen=True)
class TaskContext:
    """Where a task finds everything: the model's checkpoint (a path), the data dir, the job; the broker (its
    merge lock) and the leases are the process's own settings."""

    model_path: str
    data: DataDir
    job_id: str | None = None
    broker: Broker | None = field(default=None, compare=False)  # merges take its lock (one merger); None: in process
    lease_s: float = 60.0  # a worked-on file's lease (indexer.jobs.leases), renewed every third of it
    queue_lease_s: float = 900.0  # how long a dispatched file may wait for a task before it counts as lost

    @property
    def message(self) -> TaskMessage:
        """What crosses the broker with each of this job's tasks: plain strings (the catalog's URL as given)."""
        return TaskMessage(self.model_path, str(self.data.root.resolve()), self.data.catalog_url)

    def received(self, message: TaskMessage, job_id: str | None) -> TaskContext:
        """The context of a task received from the broker: the model, data dir and catalog the message names;
        the rest of the layout (how the token store is partitioned), the leases and the broker this process's."""
        data = dataclasses.replace(self.data, root=Path(message.data_dir), database_url=message.database_url)
        return dataclasses.replace(self, model_path=message.model_path, data=data, job_id=job_id)


@dataclass
class Resources:
    """What a process keeps between tasks: one model per checkpoint, one session factory per catalog."""

    models: dict[str, CAVMAESync] = field(default_factory=dict)
    catalogs: dict[str, sessionmaker[Session]] = field(default_factory=dict)

    def model(self, path: str) -> CAVMAESync:
        if path not in self.models:
            self.models[path] = load_model(path)
        return self.models[path]

    def sessions(self, url: str) -> sessionmaker[Session]:
        if url not in self.catalogs:
            self.catalogs[url] = open_catalog(url)
        return self.catalogs[url]


@dataclass(frozen=True)
class TaskRun:
    """One run of a task (or of a job's tasks in this process): its context and the catalog's session factory;
    the model's id is looked up once, when first asked (a job dispatched through the broker never reads the
    checkpoint here), and the model loaded on first use (`model`)."""

    ctx: TaskContext
    sessions: sessionmaker[Session]
    resources: Resources = field(compare=False)

    @classmethod
    def open(cls, ctx: TaskContext, res: Resources) -> TaskRun:
        return cls(ctx, res.sessions(ctx.data.catalog_url), res)

    @functools.cached_property
    def model_id(self) -> str:
        """The model's id (`indexer.ingest.pipeline.model_id_of`), once per run."""
        return model_id_of(self.ctx.model_path)

    @property
    def job_id(self) -> str | None:
        return self.ctx.job_id

    @property
    def data(self) -> DataDir:
        return self.ctx.data

    def model(self) -> CAVMAESync:
        """The model, loaded once per process (`Resources`)."""
        return self.resources.model(self.ctx.model_path)
