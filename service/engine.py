"""What the API holds while it runs: the model, the catalog, the token store and the version it reads,
and the inference slots. Built once by the lifespan (`Engine.start`); requests share it.

A new index version (written by `cavsync index`, a Celery worker or this process's own jobs) is
picked up without a restart: before a request that reads the index, `CURRENT` (a sharded store's
`GENERATION`) is compared with the loaded version's name (one small file read) and the version is reopened
when they differ. Searches run through the engine's `Searcher`: in this process, or on the shards' replicas
of a Ray cluster, which are told the shard versions of the loaded generation with every request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import anyio
import numpy as np
import torch

from indexer.catalog.queries import Sessions
from indexer.catalog.tables import open_catalog
from indexer.cluster.corpus import Corpus, CorpusVersion, open_corpus
from indexer.cluster.scatter import IndexMoved, LocalSearcher, Searcher, SearchRequest, VersionGone
from indexer.ingest.pipeline import model_id_of
from indexer.search.moments import TrackHit
from model import CAVMAESync, PreprocessConfig, load_localization_head, load_model
from model.config import PRESETS
from model.inference import default_device, model_device
from model.localization import LocalizationHead
from service.config import ServiceConfig
from service.errors import Busy

log = logging.getLogger(__name__)


class InferenceSlots:
    """At most `limit` inferences at once; a request that finds none free (after `wait_s`) gets a 503."""

    def __init__(self, limit: int, wait_s: float, retry_after_s: int) -> None:
        self.limit, self.wait_s, self.retry_after_s = limit, wait_s, retry_after_s
        self._semaphore = anyio.Semaphore(limit) if limit > 0 else None

    @property
    def in_use(self) -> int:
        return 0 if self._semaphore is None else self.limit - self._semaphore.value

    def _busy(self) -> Busy:
        return Busy(f"all {self.limit} inference slots are busy; retry later", self.retry_after_s)

    async def _acquire(self) -> bool:
        if self._semaphore is None:
            return False
        if self.wait_s <= 0:
            try:
                self._semaphore.acquire_nowait()
            except anyio.WouldBlock:
                return False
            return True
        with anyio.move_on_after(self.wait_s):
            await self._semaphore.acquire()
            return True
        return False

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Hold a slot for the body of the `async with`; Busy (503) when none frees up in time."""
        if not await self._acquire():
            raise self._busy()
        assert self._semaphore is not None  # acquired: there is one
        try:
            yield
        finally:
            self._semaphore.release()


class Searched(NamedTuple):
    """A search's hits and the version they were found in (the live one when the searched one was pruned)."""

    version: CorpusVersion
    hits: list[TrackHit]


def preset_name(model: CAVMAESync) -> str:
    return next((name for name, config in PRESETS.items() if config == model.config), "custom")


@dataclass
class Engine:
    config: ServiceConfig
    model: CAVMAESync
    model_id: str
    store: Corpus  # one TokenStore, or the shards' ShardedStore (indexer.cluster.corpus)
    sessions: Sessions
    slots: InferenceSlots
    prep: PreprocessConfig
    searcher: Searcher  # in process, or the shards' replicas on a cluster (indexer.cluster.scatter)
    version: CorpusVersion | None = None  # a store version, or a generation of the shards' versions
    head: LocalizationHead | None = None  # the checkpoint's localization head: POST /localize's default method
    _reload_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, config: ServiceConfig, searcher: Searcher | None = None) -> Engine:
        """Load the model, migrate and open the catalog, open the current index version (blocking). Searches go
        through `searcher` (default: in this process)."""
        device = default_device(config.device)
        model = load_model(config.model_path).to(device).eval()
        prep = PreprocessConfig(
            max_duration_s=config.max_media_duration_s,
            max_query_s=min(config.max_query_s, config.max_media_duration_s),
            max_pixels=config.max_pixels,
            max_frames=config.max_frames,
        )
        slots = InferenceSlots(config.max_concurrent_inferences, config.inference_wait_s, config.retry_after_s)
        engine = cls(
            config,
            model,
            model_id_of(config.model_path),
            open_corpus(config.data),
            open_catalog(config.catalog_url),
            slots,
            prep,
            searcher or LocalSearcher(),
            head=load_localization_head(config.model_path, model),
        )
        engine.reload()
        engine.check_index_model()
        log.info(
            "serving model %s (%s) on %s, index version %s, localization by %s",
            engine.model_id,
            preset_name(model),
            device,
            engine.version_name,
            "its head" if engine.head is not None else "the paper's map",
        )
        return engine

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def version_name(self) -> str | None:
        return self.version.name if self.version is not None else None

    def check_index_model(self) -> None:
        """Refuse an index written by another model: its tokens are not comparable with this model's."""
        if self.version is None:
            return
        manifest = self.version.manifest
        if manifest.model_id != self.model_id or manifest.dim != self.model.config.embed_dim:
            raise RuntimeError(
                f"the index in {self.config.data.index} holds {manifest.dim}-d tokens of model {manifest.model_id}; "
                f"the API runs {self.model.config.embed_dim}-d model {self.model_id}: set CAVSYNC_MODEL_PATH "
                f"(now {self.config.model_path}) to the model the index was built with, or CAVSYNC_DATA_DIR "
                f"(now {self.config.data_dir}) to another index"
            )

    def stale(self) -> bool:
        """Whether the store's CURRENT names another version than the loaded one (one small file read)."""
        return self.store.current_name() != self.version_name

    def reload(self) -> CorpusVersion | None:
        """Open the store's current version if it changed (blocking: reads the FAISS indexes)."""
        with self._reload_lock:
            name = self.store.current_name()
            if name == self.version_name:
                return self.version
            try:  # TokenStore.open itself retries a version pruned while being opened
                self.version = self.store.open(indexes=self.searcher.needs_indexes)  # a cluster reads its own
                log.info("loaded index version %s (%d live clips)", self.version_name, len(self.version or ()))
            except (OSError, ValueError, RuntimeError) as exc:  # keep serving the loaded one; the next poll retries
                log.warning("could not open index version %s: %s", name, exc)
        return self.version

    def search(self, version: CorpusVersion, tokens: np.ndarray, request: SearchRequest) -> Searched:
        """The searcher's answer over `version` (blocking). A shard version of it pruned before a replica opened
        it (writers moved the index on during the request): the live generation is loaded and searched once
        more; a second miss is a 503 (`IndexMoved`, Retry-After), never a 500."""
        try:
            return Searched(version, self.searcher.search(version, tokens, request))
        except VersionGone as gone:
            log.info("%s: searching the live index version instead", gone)
            fresh = self.reload()
            if fresh is None or fresh.name == version.name:
                raise IndexMoved(gone.shard, gone.version, self.config.retry_after_s) from gone
        try:
            return Searched(fresh, self.searcher.search(fresh, tokens, request))
        except VersionGone as again:
            raise IndexMoved(again.shard, again.version, self.config.retry_after_s) from again

    async def current_version(self) -> CorpusVersion | None:
        """The loaded version, reopened off the event loop first when the store moved on."""
        if self.stale():
            await anyio.to_thread.run_sync(self.reload)
        return self.version
