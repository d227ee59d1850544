"""Indexing routes: start a job from paths under the media roots or from uploads; follow a job."""

from __future__ import annotations

import uuid
from pathlib import Path as FilePath
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from indexer.jobs.supervisor import Supervisor
from service.deps import EngineDep, require_api_key
from service.engine import Engine
from service.errors import BadRequest, InvalidInput, UnsupportedMedia, responses
from service.jobs import check_named_files, job_info, job_page, resolve_media_paths, reuse_indexed, submit
from service.schemas import MAX_ID, IndexPathsRequest, IndexRoots, JobAccepted, JobInfo, JobPage
from service.uploads import keep_uploads

router = APIRouter(tags=["indexing"])
MAX_UPLOAD_FILES = 1000

INDEX_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": IndexPathsRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
        },
    }
}


def get_jobs(request: Request) -> Supervisor:
    return request.app.state.jobs


async def _json_paths(request: Request) -> list[str]:
    try:
        data = await request.json()
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; nesting too deep
        raise InvalidInput(f"the body is not valid JSON: {exc}") from exc
    try:
        return IndexPathsRequest.model_validate(data).paths
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


def sent_name(upload: UploadFile) -> str | None:
    """The name an upload was sent with, without folders (None when it came without one)."""
    name = FilePath((upload.filename or "").replace("\\", "/")).name.strip()
    return name[:1024] or None


async def _uploaded_files(request: Request, engine: Engine) -> tuple[list[FilePath], list[str | None]]:
    """The uploads kept for indexing (or the indexed files of the same content) and the names they were sent with."""
    try:
        form = await request.form(max_files=MAX_UPLOAD_FILES)
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from exc
    try:
        uploads = [item for item in form.getlist("files") if isinstance(item, UploadFile)]
        if not uploads:
            raise InvalidInput("a multipart body needs one or more `files` uploads")
        kept = await anyio.to_thread.run_sync(keep_uploads, uploads, engine.config.data.uploads, engine.prep)
        paths = await anyio.to_thread.run_sync(reuse_indexed, kept, engine.sessions, engine.model_id)
        return paths, [sent_name(upload) for upload in uploads]
    finally:
        await form.close()


@router.post(
    "/index",
    response_model=JobAccepted,
    status_code=202,
    openapi_extra=INDEX_BODY,
    responses=responses(400, 401, 403, 404, 413, 415, 429, 503, 507),
    dependencies=[Depends(require_api_key)],
)
async def index(request: Request, engine: EngineDep, jobs: Annotated[Supervisor, Depends(get_jobs)]) -> JobAccepted:
    """Index media: JSON `{"paths": [...]}` (absolute files or folders under the media roots; folders are
    walked) or multipart `files` uploads (kept under the data dir's uploads/ until indexed). Uploads and files named
    in `paths` (the first 100; not those of folders, which their tasks check) are probed first: a decompression
    bomb or a file over the duration limit is 413 and no job is made. Answers at once with the job id; the job
    runs on the Celery workers, or in this process when no broker is configured."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    names: list[str | None] | None = None
    if kind == "application/json":
        paths = await _json_paths(request)
        files = await anyio.to_thread.run_sync(resolve_media_paths, paths, engine.config.media_roots)
        await anyio.to_thread.run_sync(check_named_files, paths, engine.prep)  # a bomb named: 413, no job
    elif kind == "multipart/form-data":
        files, names = await _uploaded_files(request, engine)
    else:
        raise UnsupportedMedia('send application/json {"paths": [...]} or multipart/form-data with `files`')
    retry_after = engine.config.retry_after_s
    job_id = await anyio.to_thread.run_sync(submit, jobs, files, names is not None, names, retry_after)
    return JobAccepted(job_id=job_id, files=len(dict.fromkeys(files)), mode=jobs.mode)


@router.get("/index/roots", response_model=IndexRoots)
def index_roots(engine: EngineDep) -> IndexRoots:
    """What POST /index accepts here: the media roots paths must be under, and whether it needs the API key."""
    config = engine.config
    return IndexRoots(media_roots=[str(r) for r in config.media_roots], api_key_required=config.api_key is not None)


@router.get("/jobs", response_model=JobPage, responses=responses())
def list_jobs(
    engine: EngineDep,
    jobs: Annotated[Supervisor, Depends(get_jobs)],
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> JobPage:
    """Index jobs, newest first, `limit` at a time from `offset`: state, counts and each failed file's error
    (`GET /jobs/{id}` lists every file)."""
    return job_page(engine.sessions, limit, offset, jobs)


JobId = Annotated[uuid.UUID, Path(description="The id POST /index returned.")]


@router.get("/jobs/{job_id}", response_model=JobInfo, responses=responses(404))
def get_job(engine: EngineDep, jobs: Annotated[Supervisor, Depends(get_jobs)], job_id: JobId) -> JobInfo:
    """A job's state, its counts and each file's outcome (the error of each failed one); uploads are named as
    they were sent (`name`), files given by path by their path."""
    return job_info(engine.sessions, str(job_id), jobs)
