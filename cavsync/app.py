"""The API built from the `CAVSYNC_*` settings (what `cavsync serve` runs):

uvicorn --factory cavsync.app:create_app
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

from cavsync.settings import Settings
from model.media import use_ffmpeg
from service.app import create_app as create_service

log = logging.getLogger(__name__)


def build_app(settings: Settings) -> FastAPI:
    """The service over `settings`; with a broker URL, index jobs are published to the Celery workers through
    the one broker object (`cavsync.worker.broker`); with a cluster address, searches are scattered to the
    shards' replicas on that Ray cluster (`indexer.cluster.ray_serve.RaySearcher`), else run in the API process."""
    use_ffmpeg(settings.ffmpeg)
    jobs_broker = None
    if settings.broker_url:
        from cavsync.worker import broker

        jobs_broker = broker(settings)
    searcher = None
    if (cluster := settings.cluster()) is not None:  # ray is imported only here, and only with an address
        from indexer.cluster.ray_serve import RaySearcher

        searcher = RaySearcher.start(cluster)
        if not searcher.wait_ready(cluster.call_timeout_s):  # fresh replicas start a worker process each
            log.warning("not every shard replica answered within %.0f s; /health names them", cluster.call_timeout_s)
    return create_service(settings.service_config(), jobs_broker, searcher)


def create_app() -> FastAPI:
    """uvicorn's factory: the settings of the environment."""
    return build_app(Settings())
