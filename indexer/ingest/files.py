"""The catalog's media files: what identifies an indexed file, opening it so that only that file is ever read,
and the managed copies of uploads.

An indexed file is recorded with its real path (`Video.uri`, resolved at index time), its content hash and its
size and mtime (`FileIdentity`) as they were when it was hashed. `open_indexed` opens it again only if it is
still that file: the path resolves to itself (no link stands anywhere along it now), the last component is
opened with O_NOFOLLOW, the opened descriptor's own path (`/proc/self/fd/N`) is the indexed path (a folder
swapped between the check and the open is caught), it is a regular file, and its size and mtime are the
recorded ones (a differing mtime with the same size is settled by hashing the opened file). Readers then read
that descriptor, never the path again: ffmpeg is given `fd_path(fd)`.

Uploads indexed by the API become managed files, `<data_dir>/media/<sha256><ext>` (named by their content,
hard-linked or copied from the upload, written temp-then-rename): the only files the service ever deletes (when
their last video is deleted, or by the sweep when no video or pending encoding names them), with the uploads
themselves once their job files settle (`drop_upload`). The name an upload was sent with travels in its kept
file's name (`upload_file_name`) and becomes the video's display name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, unquote

from indexer.catalog.names import shown_name
from indexer.catalog.tables import FileIdentity
from indexer.store.datadir import UPLOADS_DIR, DataDir
from model.media import NotRegularFileError

_UPLOAD = re.compile(r"^[0-9a-f]{12}-(?P<name>.+)$")
_SHA = re.compile(r"^[0-9a-f]{64}")
MAX_NAME_BYTES = 200  # a kept upload's encoded name (file systems allow 255 bytes)


class FileGone(LookupError):
    """The indexed file is no longer at its path (moved or deleted)."""


class FileChanged(RuntimeError):
    """Something else stands at the indexed path: a link, a folder swapped for a link, or other content. The
    message names the paths (for the server's log); `reason` says what changed without any path (for answers)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def identity_of(status: os.stat_result) -> FileIdentity:
    return FileIdentity(status.st_size, status.st_mtime_ns)


def hash_fd(fd: int) -> str:
    """The sha256 of an open file's bytes, read from its start through a duplicate (the caller's offset stays)."""
    with os.fdopen(os.dup(fd), "rb") as handle:
        handle.seek(0)
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fd_path(fd: int) -> str:
    """A path that opens the very file behind `fd` (this process's descriptor), whatever now stands at its
    old path; usable by child processes (ffmpeg, ffprobe) as well."""
    return f"/proc/{os.getpid()}/fd/{fd}"


class Opened(NamedTuple):
    """An indexed file opened by `open_indexed`: its descriptor (the caller closes it), its stat, and the
    identity to record when the recorded one was missing or stale (None when it matched)."""

    fd: int
    status: os.stat_result
    refreshed: FileIdentity | None


def open_indexed(uri: str, sha256: str, recorded: FileIdentity | None) -> Opened:
    """Open the indexed file at `uri` (see the module): FileGone when nothing is there, FileChanged when what is
    there is not the indexed file. A file whose identity was not recorded (indexed before it was) or whose mtime
    alone changed is hashed once and accepted when its content is the indexed one (`refreshed`)."""
    try:
        real = os.path.realpath(uri, strict=True)
    except OSError as exc:  # missing, or a dangling or looping link
        if os.path.lexists(uri):
            raise FileChanged(f"{uri} is now a broken link, not the indexed file", "a broken link is there") from exc
        raise FileGone(f"{uri} is gone") from exc
    if real != uri:
        raise FileChanged(
            f"{uri} now leads elsewhere through a link ({real})", "its path leads elsewhere through a link"
        )
    try:
        fd = os.open(uri, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise FileGone(f"{uri} is gone") from exc
    except OSError as exc:  # ELOOP: a link put in its place meanwhile
        raise FileChanged(f"{uri} cannot be opened: {exc.strerror}", f"it cannot be opened ({exc.strerror})") from exc
    try:
        return _checked(fd, uri, sha256, recorded)
    except BaseException:
        os.close(fd)
        raise


def _checked(fd: int, uri: str, sha256: str, recorded: FileIdentity | None) -> Opened:
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        raise FileChanged(f"{uri} is no longer a regular file", "it is no longer a regular file")
    with contextlib.suppress(OSError):  # no /proc (not Linux): the realpath check above stands alone
        if os.readlink(f"/proc/self/fd/{fd}") != uri:
            raise FileChanged(
                f"{uri} moved behind a link while it was opened", "its path leads elsewhere through a link"
            )
    now = identity_of(status)
    if recorded is not None and now == recorded:
        return Opened(fd, status, None)
    if recorded is not None and now.size != recorded.size:
        changed = f"it has changed since it was indexed ({now.size} bytes, was {recorded.size})"
        raise FileChanged(f"{uri}: {changed}", changed)
    if hash_fd(fd) != sha256:
        raise FileChanged(f"{uri} has changed since it was indexed (other content)", "it holds other content now")
    return Opened(fd, status, now)


@contextlib.contextmanager
def opened_indexed(uri: str, sha256: str, recorded: FileIdentity | None) -> Iterator[Opened]:
    """`open_indexed`, closed on exit."""
    opened = open_indexed(uri, sha256, recorded)
    try:
        yield opened
    finally:
        os.close(opened.fd)


def is_intact(uri: str, sha256: str, recorded: FileIdentity | None) -> bool:
    """Whether the indexed file is still at `uri`, unchanged (what a repair asks)."""
    try:
        with opened_indexed(uri, sha256, recorded):
            return True
    except (FileGone, FileChanged, OSError):
        return False


def hash_with_identity(path: Path) -> tuple[str, FileIdentity]:
    """The sha256 of a regular file and its identity, both of the one opened file (identity read before the
    bytes: a file written meanwhile then fails its first check and is hashed again by its reader). Raises
    OSError, or NotRegularFileError (a MediaError) for what is not a regular file: it is opened non-blocking and
    checked before a byte is read (a FIFO would block)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise NotRegularFileError(f"{path.name}: not a regular file (a FIFO, device or socket); give a media file")
        return hash_fd(fd), identity_of(status)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ uploads
def upload_file_name(sent: str | None, media_suffixes: frozenset[str] | set[str]) -> str:
    """The kept name of an upload, `<12 hex>-<the sent name, percent-encoded>`: no directory, no unusual
    character, and a dot only before a media extension (ffmpeg picks a demuxer from content, never from a
    client-chosen extension such as .m3u8), yet the sent name comes back exactly (`sent_name`)."""
    name = Path((sent or "").replace("\\", "/")).name or "upload"
    while len(quote(name, safe="")) > MAX_NAME_BYTES:
        name = name[1:]  # keep the end: the extension
    suffix = Path(name).suffix
    keep = suffix if suffix.lower() in media_suffixes else ""
    stem = name[: len(name) - len(keep)]
    encoded = quote(stem, safe="").replace(".", "%2E") + quote(keep, safe="")
    return f"{uuid.uuid4().hex[:12]}-{encoded}"


def sent_name(path: str | os.PathLike[str]) -> str | None:
    """The name an upload was sent with, from its kept file (`upload_file_name`); None for any other file."""
    file = Path(path)
    found = _UPLOAD.match(file.name)
    if file.parent.name != UPLOADS_DIR or found is None:
        return None
    return unquote(found["name"])


def named_as_sent(error: str, path: str, name: str) -> str:
    """An upload's error as its user knows the file: its kept path and file name replaced by the name it was sent
    with, shown (`/data/uploads/817e490bbb18-mine_a.mp4: ...` -> `mine_a.mp4: ...`)."""
    shown = shown_name(name)
    return error.replace(path, shown).replace(Path(path).name, shown)


def is_upload(path: str | os.PathLike[str], uploads: Path) -> bool:
    """Whether `path` is one of the API's kept uploads (a file of the data dir's `uploads` folder)."""
    return Path(path).parent.resolve() == uploads.resolve()


class Source(NamedTuple):
    """Where an indexed file will be read from: its real path (an upload's managed copy), the name shown and
    its identity as hashed."""

    uri: str
    name: str
    identity: FileIdentity


def source_of(
    path: str,
    sha256: str,
    identity: FileIdentity,
    data: DataDir,
    media_suffixes: frozenset[str] | set[str],
    decoded: bool = True,
) -> Source:
    """Where the file at `path` (content `sha256`, as hashed: `identity`) is indexed from. An upload that decodes
    becomes a managed copy named by its content and shown by the name it was sent with; one that failed is not
    kept: recorded by that name alone, no path (`uri` empty: its temporary file goes once its job file is
    settled). Any other file is indexed, or recorded failed, where it is."""
    if not is_upload(path, data.uploads):
        return Source(str(Path(path).resolve()), Path(path).name, identity)
    name = sent_name(path) or Path(path).name
    if not decoded:
        return Source("", name, identity)
    managed = keep_managed(Path(path), sha256, data.media, managed_suffix(name, media_suffixes))
    return Source(str(managed), name, identity_of(managed.stat()))


def drop_upload(uploads: Path, path: str) -> None:
    """Delete a file of a settled job when it is one of the API's uploads (kept only to be indexed)."""
    if is_upload(path, uploads):
        Path(path).unlink(missing_ok=True)


def is_managed(uri: str, media_dir: Path) -> bool:
    """Whether `uri` is a managed copy (a file of `media_dir` named by its content)."""
    path = Path(uri)
    return path.parent == media_dir.resolve() and _SHA.match(path.name) is not None


def keep_managed(source: Path, sha256: str, media_dir: Path, suffix: str) -> Path:
    """The managed copy of `source` (content `sha256`): `<media_dir>/<sha256><suffix>`, or an existing copy of
    that content under another extension. Hard-linked when the file system allows (the upload is deleted
    once settled), else copied; written to a temp name and renamed, so a copy is never half there."""
    media_dir = media_dir.resolve()
    media_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(p for p in media_dir.glob(f"{sha256}*") if p.is_file() and not p.is_symlink())
    if existing:
        return existing[0]
    target = media_dir / f"{sha256}{suffix.lower()}"
    tmp = media_dir / f".{sha256}.{uuid.uuid4().hex}.tmp"
    try:
        try:
            os.link(source, tmp, follow_symlinks=False)
        except OSError:  # another file system, or links not allowed
            with source.open("rb") as src, tmp.open("wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def managed_suffix(name: str | None, media_suffixes: frozenset[str] | set[str]) -> str:
    """The extension a managed copy keeps (a media one of the sent name, so players get its Content-Type)."""
    suffix = Path(name or "").suffix.lower()
    return suffix if suffix in media_suffixes else ""


def remove_managed(uris: list[str], media_dir: Path) -> int:
    """Delete the given managed copies (files elsewhere, under the media roots or anywhere, are never touched);
    returns how many were deleted."""
    removed = 0
    for uri in uris:
        if is_managed(uri, media_dir):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(uri)
                removed += 1
    return removed
