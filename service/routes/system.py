"""Health and Prometheus metrics."""

from __future__ import annotations

import logging
from dataclasses import asdict

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from indexer.catalog.queries import Sessions, count_videos
from indexer.catalog.tables import VideoStatus
from indexer.cluster.corpus import version_number
from indexer.jobs.broker import queue_state
from service.deps import EngineDep, VersionDep
from service.engine import preset_name
from service.schemas import HealthResponse, IndexInfo, ModelInfo, ShardInfo

log = logging.getLogger(__name__)
router = APIRouter(tags=["system"])


def indexed_videos(sessions: Sessions) -> int | None:
    """Indexed videos in the catalog; None when the database does not answer."""
    try:
        return count_videos(sessions, VideoStatus.INDEXED)
    except Exception as exc:  # any failure to reach it is the answer
        log.warning("catalog unreachable: %s", exc)
        return None


@router.get("/health", response_model=HealthResponse)
async def health(request: Request, engine: EngineDep, version: VersionDep) -> HealthResponse:
    """The model served, the index version loaded and its size, and whether the queue and catalog answer."""
    queue = await anyio.to_thread.run_sync(queue_state, request.app.state.jobs.broker)
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
    states = await anyio.to_thread.run_sync(engine.searcher.states, version)
    shards = [ShardInfo(**{**asdict(s), "nodes": list(s.nodes)}) for s in states]
    index = IndexInfo(
        version=version.name if version else None,
        clips=len(version) if version else 0,
        videos=videos or 0,
        shards=shards,
    )
    served = all(s.alive > 0 for s in states if s.version is not None)  # a shard without replica: 503 to searches
    healthy = videos is not None and queue != "unreachable" and served
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
    registry.index_version.set(version_number(version))
    registry.inferences.set(engine.slots.in_use)
    registry.shards(await anyio.to_thread.run_sync(engine.searcher.states, version))
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
