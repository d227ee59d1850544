"""Index jobs from the API: which paths may be indexed, starting a job through the supervisor
(`indexer.jobs.supervisor`), and a job as the API shows it. No SQL and no broker here: the job records
and views (`indexer.jobs.records`, `indexer.jobs.views`) read the catalog, the supervisor talks to the broker.
"""

from __future__ import annotations

import logging
from pathlib import Path

from indexer.catalog.tables import FileState, IndexJob, JobFile, JobState, recorded_identity
from indexer.ingest import files
from indexer.ingest.pipeline import content_hash, list_media
from indexer.jobs import records, views
from indexer.jobs.supervisor import Supervisor
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


ROOTS_LISTED = "GET /index/roots lists them"  # answers never echo the roots themselves, nor where a link leads


def resolve_media_paths(paths: list[str], media_roots: tuple[Path, ...]) -> list[Path]:
    """Absolute paths of files or folders under the media roots -> the media files to index, each once, in order.

    403 for anything outside the roots (after resolving symlinks and `..`), 404 for a missing path,
    422 for an invalid one or when no media file is found. Folders are walked for media files. Each distinct
    path is checked once (a path repeated is one path: the job lists it once). Answers name a path as it was
    given (or a file under it), never where it resolves to; the log has that.
    """
    if not media_roots:
        raise Forbidden("indexing by path is disabled: no media roots are configured (CAVSYNC_MEDIA_ROOTS is empty)")
    roots = [root.resolve() for root in media_roots]
    found: dict[Path, None] = {}
    for raw in dict.fromkeys(paths):
        found.update(dict.fromkeys(_media_under(raw, roots)))
    if not found:
        raise InvalidInput("no media file under the given paths")
    return list(found)


def _media_under(raw: str, roots: list[Path]) -> list[Path]:
    """The media files one given path names (itself, or those found in its folder), resolved, all in the roots."""
    if not raw or "\x00" in raw or not Path(raw).is_absolute():
        raise InvalidInput(f"{raw!r}: give an absolute path under a media root")
    try:
        path = Path(raw).resolve()
        if not _inside(path, roots):
            log.info("POST /index: %s (%s) is outside the media roots %s", raw, path, roots)
            raise Forbidden(f"{raw}: outside the media roots ({ROOTS_LISTED}); add its folder there to index it")
        if not path.exists():
            raise NotFound(f"{raw}: no such file or folder")
        if not (path.is_dir() or path.is_file()):  # a FIFO would block the job that opens it
            raise InvalidInput(f"{raw}: not a regular file (a FIFO, device or socket); give media files")
        listed = list_media(path) if path.is_dir() else [path]
        media = [f.resolve() for f in listed]
    except OSError as exc:
        raise InvalidInput(f"{raw}: {exc.strerror or type(exc).__name__}") from exc
    except RuntimeError as exc:  # Path.resolve() on a symlink loop (Python < 3.13)
        raise InvalidInput(f"{raw}: a loop of links") from exc
    for given, real in zip(listed, media, strict=True):
        if not _inside(real, roots):
            log.info("POST /index: %s leads to %s, outside the media roots %s", given, real, roots)
            shown = Path(raw) / given.relative_to(path) if given != path else Path(raw)
            raise Forbidden(f"{shown}: a link out of the media roots ({ROOTS_LISTED})")
    return media


PROBED_NAMED_FILES = 100  # files a request names that are probed before its job starts (~0.1 s each)


def check_named_files(paths: list[str], prep: PreprocessConfig) -> None:
    """The files a request names itself (the first PROBED_NAMED_FILES distinct ones; not those found by walking a
    folder) are probed before the job starts, as uploads are: a decompression bomb (whatever its header says: the
    probe's decoders are bounded) or a file over the duration limit is a MediaTooLongError (413) and no job is
    made. Unreadable files are left for their task to record as failed; files found in folders (and past
    PROBED_NAMED_FILES) are checked by their tasks, which fail them with the same message."""
    named: dict[Path, str] = {}
    for raw in dict.fromkeys(paths):
        if Path(raw).is_file():
            named.setdefault(Path(raw).resolve(), raw)
    for path, raw in list(named.items())[:PROBED_NAMED_FILES]:
        try:
            checked_duration(probe(path, prep.timeout_s, prep.limits), prep)
        except MediaTooLongError as exc:  # named as given, not as resolved
            raise type(exc)(str(exc).replace(str(path), raw)) from exc
        except MediaError:
            continue


def reuse_indexed(kept: list[Path], sessions: SessionFactory, model_id: str) -> list[Path]:
    """Uploads kept for indexing whose content this model has indexed already, its file intact, are deleted at
    once, and the job names the indexed file instead (its task skips it by content hash): no orphan copy is left
    behind. One whose indexed file is gone stays: its task makes it that video's file (a managed copy). One path
    per upload, in order (the job counts a path given twice once)."""
    paths: list[Path] = []
    for path in kept:
        videos = views.indexed_videos(sessions, content_hash(path), model_id)
        intact = [v.uri for v in videos if files.is_intact(v.uri, v.sha256, recorded_identity(v))]
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
    return files.named_as_sent(error, path, name)


def _file_info(row: JobFile) -> JobFileInfo:
    """A job's file as its user knows it: an upload by the name it was sent with, never by where the server kept
    it (`path` null); a file given by path by that path."""
    uploaded = row.name is not None
    return JobFileInfo(
        path=None if uploaded else row.path,
        name=row.name or row.path,
        uploaded=uploaded,
        state=row.state,
        error=shown_error(row.error, row.path, row.name),
    )


def _summary(job: IndexJob, failures: list[JobFileInfo], blocked: str | None = None) -> dict:
    names = ("id", "state", "total", "done", "failed", "skipped", "created_at", "updated_at")
    partial = job.state == JobState.DONE and job.failed > 0
    waiting = blocked if job.state in (JobState.QUEUED, JobState.RUNNING) else None
    return {name: getattr(job, name) for name in names} | {
        "errors": {f.name: f.error or "" for f in failures},
        "partial": partial,
        "failures": failures,
        "blocked": waiting,
    }


def _blocked(supervisor: Supervisor | None, job_id: str) -> str | None:
    return supervisor.blocked(job_id) if supervisor is not None else None


def job_info(sessions: SessionFactory, job_id: str, supervisor: Supervisor | None = None) -> JobInfo:
    """A job as the catalog has it (each task recounts its job when its file is settled), with its files, and
    why it is not progressing when its supervisor knows (`blocked`)."""
    found = views.read_job(sessions, job_id)
    if found is None:
        raise NotFound(f"no index job {job_id}")
    files_ = [_file_info(row) for row in found.files]
    failures = [f for f in files_ if f.state == FileState.FAILED]
    return JobInfo(**_summary(found.job, failures, _blocked(supervisor, job_id)), files=files_)


def job_page(sessions: SessionFactory, limit: int, offset: int, supervisor: Supervisor | None = None) -> JobPage:
    """Jobs newest first, `limit` at a time from `offset`, with their counts and failed files."""
    total, found = views.read_jobs(sessions, limit, offset)
    items = [
        JobSummary(**_summary(v.job, [_file_info(r) for r in v.files], _blocked(supervisor, v.job.id))) for v in found
    ]
    return JobPage(total=total, limit=limit, offset=offset, items=items)
