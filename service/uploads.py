"""Uploaded files on disk. The request body limit is enforced while the body streams in (FastAPI's
`max_body_size`: Content-Length checked first, then every received chunk counted), so an upload is
never bigger than the limit once it reaches these functions; here it is copied in chunks to a file
the decoder can open: a temporary one that is always deleted, or a kept one for indexing. The file
name never carries a client-chosen extension other than a media one.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from starlette.datastructures import UploadFile

from indexer.ingest.files import upload_file_name
from indexer.ingest.pipeline import MEDIA_SUFFIXES
from model import PreprocessConfig
from model.features import checked_duration
from model.media import MediaError, MediaTooLongError
from model.probe import probe

CHUNK = 1 << 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(filename: str | None, default: str = "upload") -> str:
    """A file name without directories or unusual characters, at most 100 characters."""
    name = _UNSAFE.sub("_", Path(filename or "").name).strip("._")[-100:]
    return name or default


def neutral_name(filename: str | None) -> str:
    """The upload's safe name with no extension (dots become _): ffmpeg then picks the demuxer from the
    content alone, never from a client-chosen extension (.txt would be read as ANSI art, .m3u8 as a playlist)."""
    return safe_name(filename).replace(".", "_")


def _copy(upload: UploadFile, target: Path) -> None:
    upload.file.seek(0)
    with target.open("wb") as out:
        shutil.copyfileobj(upload.file, out, CHUNK)


@contextmanager
def saved_upload(upload: UploadFile) -> Iterator[Path]:
    """The upload as a file in a private temporary folder, both deleted on exit. A `MediaError` raised
    inside names the file as the client sent it (`mic recording.webm`), not the server's temporary file."""
    folder = Path(tempfile.mkdtemp(prefix="cavsync-upload-"))
    path = folder / neutral_name(upload.filename)
    try:
        _copy(upload, path)
        yield path
    except MediaError as exc:  # the same error, with the name as given instead of the temporary path
        given = Path(upload.filename or "").name or "the upload"
        raise type(exc)(str(exc).replace(str(path), given).replace(path.name, given)) from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def keep_uploads(uploads: list[UploadFile], folder: Path, prep: PreprocessConfig) -> list[Path]:
    """Save uploads for indexing as `<folder>/<random>-<the sent name, percent-encoded>` (`indexer.ingest.files.
    upload_file_name`: the video is shown by that name); the task that settles each deletes it (one indexed
    lives on as a managed copy under the data dir's media/).
    The paths are absolute: they cross the broker to workers that may run in another folder. An upload
    longer than `prep.max_duration_s` raises MediaTooLongError and none is kept; unreadable ones are kept
    for the job to record as failed."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    kept = []
    try:
        for upload in uploads:
            path = folder / upload_file_name(upload.filename, MEDIA_SUFFIXES)
            kept.append(path)
            _copy(upload, path)
            _check_duration(path, upload.filename, prep)
    except BaseException:
        for path in kept:
            path.unlink(missing_ok=True)
        raise
    return kept


def _check_duration(path: Path, filename: str | None, prep: PreprocessConfig) -> None:
    try:
        info = probe(path, prep.timeout_s, prep.limits)
    except MediaTooLongError as exc:  # over the pixel or frame limits (MediaTooLargeError)
        raise type(exc)(str(exc).replace(path.name, safe_name(filename), 1)) from exc
    except MediaError:
        return
    try:
        checked_duration(info, prep)
    except MediaTooLongError as exc:  # named as the client sent it, not as it was kept
        raise MediaTooLongError(str(exc).replace(path.name, safe_name(filename), 1)) from exc
