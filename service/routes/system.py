"""Health and Prometheus metrics."""

from __future__ import annotations

import logging

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from indexer.catalog import VideoStatus
from indexer.catalog_queries import Sessions, count_videos
from service.deps import EngineDep, VersionDep
from service.engine import preset_name
from service.schemas import HealthResponse, IndexInfo, ModelInfo

log = logging.getLogger(__name__)
router = APIRouter(tags=["system"])
PROBE_TIMEOUT_S = 2.0


def queue_state(broker_url: str | None) -> str:
    """`in-process` without a broker, else whether the broker answers within a couple of seconds."""
    if not broker_url:
        return "in-process"
    try:
        if broker_url.startswith(("redis://", "rediss://", "unix://")):
            import redis

            redis.Redis.from_url(
                broker_url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S
            ).ping()
        else:
            from kombu import Connection

            with Connection(broker_url, connect_timeout=PROBE_TIMEOUT_S) as connection:
                connection.ensure_connection(max_retries=1)
    except Exception as exc:  # any failure to reach it is the answer
        log.warning("broker %s unreachable: %s", broker_url.split("@")[-1], exc)
        return "unreachable"
    return "reachable"


def indexed_videos(sessions: Sessions) -> int | None:
    """Indexed videos in the catalog; None when the database does not answer."""
    try:
        return count_videos(sessions, VideoStatus.INDEXED)
    except Exception as exc:  # any failure to reach it is the answer
        log.warning("catalog unreachable: %s", exc)
        return None


@router.get("/health", response_model=HealthResponse)
async def health(engine: EngineDep, version: VersionDep) -> HealthResponse:
    """The model served, the index version loaded and its size, and whether the queue and catalog answer."""
    queue = await anyio.to_thread.run_sync(queue_state, engine.config.broker_url)
    videos = await anyio.to_thread.run_sync(indexed_videos, engine.sessions)
    config = engine.model.config
    model = ModelInfo(
        id=engine.model_id,
        preset=preset_name(engine.model),
        path=str(engine.config.model_path),
        device=str(engine.device),
        embed_dim=config.embed_dim,
        frames_per_clip=config.frames_per_clip,
        image_size=config.image_size,
        grid_size=config.visual_grid[0],
    )
    index = IndexInfo(
        version=version.name if version else None, clips=len(version) if version else 0, videos=videos or 0
    )
    healthy = videos is not None and queue != "unreachable"
    return HealthResponse(
        status="ok" if healthy else "degraded",
        model=model,
        index=index,
        queue=queue,
        database="ok" if videos is not None else "unreachable",
    )


PROMETHEUS_TEXT = {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}


@router.get("/metrics", response_class=Response, responses={200: PROMETHEUS_TEXT})
async def metrics(request: Request, engine: EngineDep, version: VersionDep) -> Response:
    """Prometheus metrics: requests and latencies per route template, the index size, inferences in progress."""
    registry = request.app.state.metrics
    registry.index_clips.set(len(version) if version else 0)
    registry.index_version.set(version.manifest.version if version else 0)
    registry.inferences.set(engine.slots.in_use)
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
