"""Catalog routes: videos (paginated), one video, its media file (with HTTP Range) and a poster frame, its
stored per-frame tokens, deleting it.

Plain `def` endpoints: FastAPI runs them in a worker thread (catalog, store and file I/O block)."""

from __future__ import annotations

import os
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import FileResponse, Response

from indexer.catalog.queries import video_detail, video_page, video_status
from indexer.catalog.tables import VideoStatus
from indexer.cluster.corpus import version_part
from indexer.ingest.pipeline import delete_videos
from indexer.store.version import StoreVersion
from service.deps import EngineDep, VersionDep, require_api_key
from service.errors import ErrorResponse, NotFound, responses
from service.media import OpenedFileResponse, cached_poster, forget_posters, open_catalog_file
from service.schemas import (
    MAX_ID,
    ClipEmbeddings,
    DeleteResponse,
    EmbeddingsResponse,
    VideoDetail,
    VideoInfo,
    VideoPage,
)
from service.served_types import TYPES, content_disposition
from service.stored import indexed_clips

router = APIRouter(tags=["catalog"])
VideoId = Annotated[int, Path(ge=1, le=MAX_ID, description="Catalog id of the video.")]


@router.get("/videos", response_model=VideoPage, responses=responses())
def list_videos(
    engine: EngineDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    status: Annotated[VideoStatus | None, Query(description="Only videos in this state.")] = None,
) -> VideoPage:
    """Videos of the catalog by id, `limit` at a time from `offset`."""
    total, rows = video_page(engine.sessions, limit, offset, status)
    items = [VideoInfo.model_validate(v) for v in rows]
    return VideoPage(total=total, limit=limit, offset=offset, items=items)


@router.get("/videos/{video_id}", response_model=VideoDetail, responses=responses(404))
def get_video(engine: EngineDep, video_id: VideoId) -> VideoDetail:
    """One video with its clips (any state: pending, indexed, failed with its error, deleted)."""
    video = video_detail(engine.sessions, video_id)
    if video is None:
        raise NotFound(f"no video {video_id}")
    return VideoDetail.model_validate(video)


BINARY = {"schema": {"type": "string", "format": "binary"}}
MEDIA: dict[str, Any] = {
    "content": {"video/*": BINARY, "audio/*": BINARY, "application/octet-stream": BINARY},
    "description": "The whole file (200) or, for a `Range: bytes=a-b` request, those bytes (206), typed as what "
    "the file is (its probed container; application/octet-stream when unknown).",
    "headers": {
        "Accept-Ranges": {"schema": {"type": "string"}, "description": "bytes"},
        "Content-Disposition": {
            "schema": {"type": "string"},
            "description": "inline, with the video's name (ASCII `filename`, UTF-8 `filename*`)",
        },
    },
}
PARTIAL: dict[str, Any] = {"description": "The requested byte range (Content-Range says which)."}
RANGE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "A malformed Range header"},
    416: {
        "model": ErrorResponse,
        "description": "A Range starting past the end of the file",
        "headers": {"Content-Range": {"schema": {"type": "string"}, "description": "bytes */<file size>"}},
    },
}
JPEG: dict[str, Any] = {
    "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
    "description": "A JPEG frame",
}


@router.get(
    "/videos/{video_id}/media",
    response_class=FileResponse,
    responses={200: MEDIA, 206: PARTIAL, **RANGE_ERRORS, **responses(404, 409)},
)
def video_media(engine: EngineDep, video_id: VideoId) -> FileResponse:
    """The video's original file, as indexed (any state but deleted), with the Content-Type of what it is (its
    container, probed: `video/mp4`, `audio/wav`, ...; `application/octet-stream` when unknown), never of the
    name it was sent with, and `Content-Disposition: inline` with that name made safe (ending with an extension
    of the type). HTTP Range requests are answered 206 with the bytes asked for, so players can seek. Only files
    of the catalog are served, and only as they were indexed: 404 when the video is unknown or deleted, or its
    file is gone; 409 when something else now stands at its path (a link, other content)."""
    entry, opened = open_catalog_file(engine.sessions, video_id)
    try:
        served = TYPES.served_type(entry.sha256, opened, engine.prep.timeout_s, engine.prep.limits.max_pixels)
    except BaseException:
        os.close(opened.fd)
        raise
    headers = {"Cache-Control": "no-cache", "Content-Disposition": content_disposition(entry.name, served)}
    return OpenedFileResponse(opened, served.media_type, headers)


@router.get("/videos/{video_id}/poster", response_class=Response, responses={200: JPEG, **responses(404, 409)})
def video_poster(
    engine: EngineDep,
    video_id: VideoId,
    time: Annotated[float, Query(ge=0, le=1e6, allow_inf_nan=False, description="Seconds into the video.")] = 0.0,
    width: Annotated[int, Query(ge=16, le=1280, description="Width of the JPEG in pixels (aspect kept).")] = 320,
) -> Response:
    """The video's frame at `time` as a JPEG (`X-Frame-Time` says the time used: clamped to the last frame;
    422 past the end of the video or for a file without pictures; 404 / 409 as for its media). Posters are
    cached by the file's content, time and width: the second time costs no decode."""
    config = engine.config
    data, used = cached_poster(engine.sessions, config.data_dir, video_id, time, width, engine.prep)
    headers = {"X-Frame-Time": f"{used:.3f}", "Cache-Control": "max-age=3600"}
    return Response(data, media_type="image/jpeg", headers=headers)


def _clip_tokens(version: StoreVersion, clip_ids: list[int], modality: str) -> dict[int, list[list[float]] | None]:
    rows = version.rows_of(clip_ids)
    tokens = version.gather(modality, rows)
    present = version.present[modality][rows]
    return {
        int(cid): (np.round(t, 6).tolist() if has else None)
        for cid, t, has in zip(version.clip_ids[rows], tokens, present, strict=True)
    }


@router.get("/videos/{video_id}/embeddings", response_model=EmbeddingsResponse, responses=responses(404))
def embeddings(
    engine: EngineDep,
    version: VersionDep,
    video_id: VideoId,
    limit: Annotated[int, Query(ge=1, le=1000, description="Clips per page.")] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID, description="Clips to skip.")] = 0,
) -> EmbeddingsResponse:
    """The stored per-frame global tokens (T, D), L2-normalised, of each clip, both modalities; a long
    video's clips come a page at a time (`clips_total` says how many there are)."""
    every = indexed_clips(engine.sessions, video_id)
    clips = every[offset : offset + limit]
    ids = [c[0] for c in clips]
    part = version_part(version, video_id)  # the version of its shard
    if version is None or part is None or len(part.rows_of(ids)) != len(ids):
        raise NotFound(f"video {video_id} is not in the loaded index version")
    audio, visual = _clip_tokens(part, ids, "audio"), _clip_tokens(part, ids, "visual")
    return EmbeddingsResponse(
        video_id=video_id,
        model_id=version.manifest.model_id,
        index_version=version.name,
        frames_per_clip=version.frames,
        dim=version.manifest.dim,
        clips_total=len(every),
        offset=offset,
        clips=[ClipEmbeddings(clip_id=i, start=s, duration=d, audio=audio[i], visual=visual[i]) for i, s, d in clips],
    )


@router.delete(
    "/videos/{video_id}",
    response_model=DeleteResponse,
    responses=responses(401, 403, 404, 429),
    dependencies=[Depends(require_api_key)],
)
def delete_video(engine: EngineDep, video_id: VideoId) -> DeleteResponse:
    """Remove a video from search (its tokens leave the index at once) and mark it deleted in the catalog; its
    managed copy (an indexed upload) and cached posters go too. Files under the media roots are never deleted.
    A delete of a video whose job is committing it waits for that commit, then deletes: never undone by it."""
    if video_status(engine.sessions, video_id) is None:
        raise NotFound(f"no video {video_id}")
    removed = delete_videos([video_id], engine.store, engine.sessions, engine.config.data.media)
    forget_posters(engine.config.data_dir, video_id)
    version = engine.reload()
    return DeleteResponse(video_id=video_id, deleted=removed > 0, index_version=version.name if version else None)
