"""Index jobs from the API: which paths may be indexed, starting a job through the supervisor
(`indexer.jobs.supervisor`), and a job as the API shows it. No SQL and no broker here: the records
(`indexer.jobs.records`) read the catalog, the supervisor talks to the broker.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from indexer import files
from indexer.catalog import FileState, IndexJob, JobFile, JobState
from indexer.jobs import records
from indexer.jobs.supervisor import Supervisor
from indexer.pipeline import content_hash, list_media
from model import PreprocessConfig
from model.features import checked_duration
from model.media import MediaError, MediaTooLongError
from model.probe import probe
from service.errors import Forbidden, InvalidInput, NotFound, Unavailable
from service.schemas import JobFileInfo, JobInfo, JobPage, JobSummary

log = logging.getLogger(__name__)

SessionFactory = records.Sessions  # the catalog's session factory (the records read through it)


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def resolve_media_paths(paths: list[str], media_roots: tuple[Path, ...]) -> list[Path]:
    """Absolute paths of files or folders under the media roots -> the media files to index.

    403 for anything outside the roots (after resolving symlinks and `..`), 404 for a missing path,
    422 for an invalid one or when no media file is found. Folders are walked for media files.
    """
    if not media_roots:
        raise Forbidden("indexing by path is disabled: no media roots are configured (CAVSYNC_MEDIA_ROOTS is empty)")
    roots = [root.resolve() for root in media_roots]
    setting = f"CAVSYNC_MEDIA_ROOTS={json.dumps([str(root) for root in media_roots])}"
    found: dict[Path, None] = {}
    for raw in paths:
        if not raw or "\x00" in raw or not Path(raw).is_absolute():
            raise InvalidInput(f"{raw!r}: give an absolute path under a media root")
        try:
            path = Path(raw).resolve()
            if not _inside(path, roots):
                raise Forbidden(f"{raw}: outside the media roots ({setting}); add its folder there to index it")
            if not path.exists():
                raise NotFound(f"{raw}: no such file or folder")
            if not (path.is_dir() or path.is_file()):  # a FIFO would block the job that opens it
                raise InvalidInput(f"{raw}: not a regular file (a FIFO, device or socket); give media files")
            files = [f.resolve() for f in list_media(path)] if path.is_dir() else [path]
        except OSError as exc:
            raise InvalidInput(f"{raw}: {exc.strerror or exc}") from exc
        except RuntimeError as exc:  # Path.resolve() on a symlink loop (Python < 3.13)
            raise InvalidInput(f"{raw}: {exc}") from exc
        outside = [f for f in files if not _inside(f, roots)]
        if outside:
            raise Forbidden(f"{outside[0]}: a link out of the media roots ({setting})")
        found.update(dict.fromkeys(files))
    if not found:
        raise InvalidInput("no media file under the given paths")
    return list(found)


PROBED_NAMED_FILES = 100  # files a request names that are probed before its job starts (~0.1 s each)


def check_named_files(paths: list[str], prep: PreprocessConfig) -> None:
    """The files a request names itself (the first PROBED_NAMED_FILES; not those found by walking a folder)
    are probed before the job starts, as uploads are: a decompression bomb (whatever its header says: the
    probe's decoders are bounded) or a file over the duration limit is a MediaTooLongError (413) and no job is
    made. Unreadable files are left for their task to record as failed; files found in folders (and past
    PROBED_NAMED_FILES) are checked by their tasks, which fail them with the same message."""
    named = [Path(raw).resolve() for raw in paths if Path(raw).is_file()][:PROBED_NAMED_FILES]
    for path in named:
        try:
            info = probe(path, prep.timeout_s, prep.limits)
        except MediaTooLongError:
            raise
        except MediaError:
            continue
        checked_duration(info, prep)


def reuse_indexed(kept: list[Path], sessions: SessionFactory, model_id: str) -> list[Path]:
    """Uploads kept for indexing whose content this model has indexed already, its file intact, are deleted at
    once, and the job names the indexed file instead (its task skips it by content hash): no orphan copy is left
    behind. One whose indexed file is gone stays: its task makes it that video's file (a managed copy). One path
    per upload, in order (the job counts a path given twice once)."""
    paths: list[Path] = []
    for path in kept:
        videos = records.indexed_videos(sessions, content_hash(path), model_id)
        intact = [v.uri for v in videos if files.is_intact(v.uri, v.sha256, files.recorded_identity(v))]
        if intact and Path(intact[0]).parent.resolve() != path.parent:
            path.unlink(missing_ok=True)  # (an earlier upload is not named: uploads are dropped once settled)
            path = Path(intact[0])
        paths.append(path)
    return paths


def submit(
    supervisor: Supervisor,
    paths: list[Path],
    uploaded: bool = False,
    names: list[str | None] | None = None,
    retry_after_s: int = 1,
) -> str:
    """Start a job through the supervisor; a broker that takes no task is a 503 with Retry-After (the job
    marked failed, uploads no task was sent for deleted)."""
    try:
        return supervisor.submit(paths, uploaded, names)
    except records.QueueUnavailable as exc:
        raise Unavailable(f"the indexing queue is unreachable: {exc}", {"Retry-After": str(retry_after_s)}) from exc


def shown_error(error: str | None, path: str, name: str | None) -> str | None:
    """A file's error as its user knows the file: an upload's server path and kept name replaced by the name it
    was sent with (`817e490bbb18-mine_a.mp4: ...` -> `mine_a.mp4: ...`)."""
    if error is None or name is None:
        return error
    return error.replace(path, name).replace(Path(path).name, name)


def _file_info(row: JobFile) -> JobFileInfo:
    return JobFileInfo(
        path=row.path,
        name=row.name or row.path,
        uploaded=row.name is not None,
        state=row.state,
        error=shown_error(row.error, row.path, row.name),
    )


def _summary(job: IndexJob, failures: list[JobFileInfo], blocked: str | None = None) -> dict:
    names = ("id", "state", "total", "done", "failed", "skipped", "created_at", "updated_at")
    shown = {f.path: f.error or "" for f in failures}
    errors = {path: shown.get(path, error) for path, error in (job.errors or {}).items()}
    partial = job.state == JobState.DONE and job.failed > 0
    waiting = blocked if job.state in (JobState.QUEUED, JobState.RUNNING) else None
    return {name: getattr(job, name) for name in names} | {
        "errors": errors,
        "partial": partial,
        "failures": failures,
        "blocked": waiting,
    }


def _blocked(supervisor: Supervisor | None, job_id: str) -> str | None:
    return supervisor.blocked(job_id) if supervisor is not None else None


def job_info(sessions: SessionFactory, job_id: str, supervisor: Supervisor | None = None) -> JobInfo:
    """A job as the catalog has it (each task recounts its job when its file is settled), with its files, and
    why it is not progressing when its supervisor knows (`blocked`)."""
    found = records.read_job(sessions, job_id)
    if found is None:
        raise NotFound(f"no index job {job_id}")
    files_ = [_file_info(row) for row in found.files]
    failures = [f for f in files_ if f.state == FileState.FAILED]
    return JobInfo(**_summary(found.job, failures, _blocked(supervisor, job_id)), files=files_)


def job_page(sessions: SessionFactory, limit: int, offset: int, supervisor: Supervisor | None = None) -> JobPage:
    """Jobs newest first, `limit` at a time from `offset`, with their counts and failed files."""
    total, found = records.read_jobs(sessions, limit, offset)
    items = [
        JobSummary(**_summary(v.job, [_file_info(r) for r in v.files], _blocked(supervisor, v.job.id))) for v in found
    ]
    return JobPage(total=total, limit=limit, offset=offset, items=items)
