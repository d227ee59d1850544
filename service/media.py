"""The catalog's media files for the web page: a video's original file (players seek it with HTTP Range) and a
JPEG poster frame (cached). Only files the catalog points at are ever opened: the routes take a catalog id, never
a path; a video that is deleted or whose file is gone is a 404, and a file that is no longer the one indexed (a
link now in its place, other content) a 409 (`indexer.ingest.files.open_indexed`). The file is opened once and read
through that descriptor only: the media answer streams it, ffmpeg reads it as `/proc/<pid>/fd/<n>`.

The poster cache (`<data_dir>/posters/<video id>/`) keys each JPEG by the file's content (hash, size, mtime),
the time asked (ms) and the width; it is written temp-then-rename, holds at most `POSTER_CACHE_PER_VIDEO`
posters a video (the oldest go), and a video's folder goes when the video is deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import FileResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.catalog.queries import Sessions, VideoFile, record_file_identity, video_file
from indexer.catalog.tables import VideoStatus
from indexer.ingest.files import FileChanged, FileGone, Opened, fd_path, open_indexed
from indexer.store.datadir import DataDir
from model.features import PreprocessConfig
from model.media import (
    MediaError,
    MediaInfo,
    UnreadableMediaError,
    ffmpeg_binary,
    frame_time,
    input_guard_args,
    max_pixels_args,
    run_tool,
)
from model.probe import probe
from service.errors import InvalidInput, NotFound, error_answer

log = logging.getLogger(__name__)

POSTER_MAX_BYTES = 8 << 20  # a JPEG frame of at most 1280 px wide is far smaller
POSTER_CACHE_PER_VIDEO = 64  # posters kept per video (time x width); the oldest go first
TIME_SLACK_S = 0.05  # container durations are rounded
LAST_FRAME_MARGIN_S = 2.0  # a poster asked for further than this before the end needs no probe (no frame lasts 2 s)
SHOWN_RANGE_CHARS = 100  # of a refused Range header, in its error


def catalog_entry(sessions: Sessions, video_id: int, *, indexed: bool = False) -> VideoFile:
    """The catalog's record of a video's file (any state but deleted; `indexed`: indexed only); 404 when
    unknown or deleted."""
    entry = video_file(sessions, video_id)
    if entry is None or entry.status == VideoStatus.DELETED or (indexed and entry.status != VideoStatus.INDEXED):
        state = "unknown" if entry is None else entry.status.value
        raise NotFound(f"no {'indexed ' if indexed else ''}video {video_id} ({state})")
    return entry


def open_catalog_file(sessions: Sessions, video_id: int, *, indexed: bool = False) -> tuple[VideoFile, Opened]:
    """A video's file opened as the indexed one (the caller closes `Opened.fd`): 404 when the video is unknown,
    deleted or its file gone, 409 when something else now stands at its path. An identity checked by hash (not
    recorded yet, or a new mtime on the same content) is recorded for the next time."""
    entry = catalog_entry(sessions, video_id, indexed=indexed)
    what = f"the media file of video {video_id} ({entry.name})"  # never its path: the answer names the video
    if not entry.uri:  # an upload that failed: nothing of it was kept
        raise NotFound(f"{what} was not kept: the upload could not be indexed")
    try:
        opened = open_indexed(entry.uri, entry.sha256, entry.identity)
    except FileGone as exc:
        log.warning("video %d: %s", video_id, exc)
        raise FileGone(f"{what} is gone; index it again where it is now") from exc
    except FileChanged as exc:
        log.warning("video %d: %s", video_id, exc)
        raise FileChanged(
            f"{what} is no longer the one indexed: {exc.reason}; index the file again", exc.reason
        ) from exc
    if opened.refreshed is not None:
        with contextlib.suppress(Exception):  # only a shortcut for the next reader
            record_file_identity(sessions, video_id, opened.refreshed)
    return entry, opened


@contextlib.contextmanager
def opened_catalog_file(sessions: Sessions, video_id: int, *, indexed: bool = False) -> Iterator[Opened]:
    """`open_catalog_file`, the descriptor closed on exit."""
    _, opened = open_catalog_file(sessions, video_id, indexed=indexed)
    try:
        yield opened
    finally:
        os.close(opened.fd)


def check_catalog_file(sessions: Sessions, video_id: int) -> None:
    """404 / 409 unless the indexed video's file is still the one indexed (a query by video id uses its stored
    tokens, and is refused as its media would be)."""
    with opened_catalog_file(sessions, video_id, indexed=True):
        pass


@contextlib.contextmanager
def named_errors(fd: int, name: str) -> Iterator[str]:
    """The path ffmpeg reads an opened file by (`fd_path`); a MediaError raised inside names the file by its
    shown name instead."""
    path = fd_path(fd)
    try:
        yield path
    except MediaError as exc:
        raise type(exc)(str(exc).replace(path, name).replace(Path(path).name + ":", name + ":", 1)) from exc


class OpenedFileResponse(FileResponse):
    """A FileResponse over an already opened file (`/proc/self/fd/N`: the same file, whatever its path now
    holds), Range answered 206 as FileResponse does, a Range it cannot serve in JSON as every error
    (`json_range_errors`); the descriptor is closed once the answer is sent or given up (or, never sent, when
    the response is collected)."""

    def __init__(self, opened: Opened, media_type: str, headers: dict[str, str]) -> None:
        super().__init__(
            f"/proc/self/fd/{opened.fd}", media_type=media_type, headers=headers, stat_result=opened.status
        )
        self._close = weakref.finalize(self, os.close, opened.fd)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, json_range_errors(scope, receive, send))
        finally:
            self._close()


def json_range_errors(scope: Scope, receive: Receive, send: Send) -> Send:
    """`send` for a FileResponse, whose only error answers are its plain-text ones to a Range it cannot serve
    (400 malformed, 416 outside the file with `Content-Range: bytes */size`): those are answered as JSON
    `{"detail", "errors": null}` instead, the Content-Range kept."""
    held: list[Message] = []  # the refused answer's start, then its body

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] in (400, 416):
            held.append(message)
        elif not held:
            await send(message)
        elif message["type"] == "http.response.body":
            held.append(message)
            if not message.get("more_body", False):
                await _range_error(held, scope)(scope, receive, send)

    return sending


def _range_error(held: list[Message], scope: Scope) -> ASGIApp:
    asked = repr(Headers(scope=scope).get("range", "")[:SHOWN_RANGE_CHARS])
    status, answered = held[0]["status"], Headers(raw=held[0]["headers"])
    if status == 416:
        size = answered.get("content-range", "").rsplit("/", 1)[-1]
        detail = f"Range {asked} is outside the file ({size} bytes)"
        return error_answer(416, detail, {"Content-Range": answered.get("content-range", f"bytes */{size}")})
    reason = b"".join(m.get("body", b"") for m in held[1:]).decode("utf-8", "replace").strip().rstrip(".")
    return error_answer(400, f"Range {asked} cannot be served: {reason or 'malformed'}")


def video_time(at: float, info: MediaInfo) -> float:
    """The time (ms) at which the frame asked for at `at` s of the probed media is read and answered: 0 for a
    still image; 422 past the end, beyond the rounding of container durations; a time past the start of the
    video's last frame is that frame's (`model.media.frame_time`, the one place that knows where it starts)."""
    if info.still_image:
        return 0.0
    if info.duration is not None and at > info.duration + TIME_SLACK_S:
        raise InvalidInput(f"time {at:.3f} s is past the end of the video ({info.duration:.3f} s)")
    return round(frame_time(info, at), 3)


def poster_time(path: Path, at: float, prep: PreprocessConfig, duration: float | None) -> float:
    """The time a poster asked for at `at` s is read at: as asked while it is over LAST_FRAME_MARGIN_S before the
    video's end (its `duration` as the catalog records it: no frame there can be the last), else `video_time` of
    a probe of the file (which knows where the last frame starts; 422 past the end)."""
    if duration is not None and at < duration - LAST_FRAME_MARGIN_S:
        return round(at, 3)
    return video_time(at, probe(path, prep.timeout_s, prep.limits))


def poster_jpeg(
    path: Path, at: float, width: int, prep: PreprocessConfig, name: str, duration: float | None
) -> tuple[bytes, float]:
    """The frame of a video at `at` s as a JPEG `width` px wide (aspect kept), and the time used (`poster_time`:
    one probe near the end only). `name`: the file as errors call it. Every ffmpeg run confined to the file as
    every reader is (`model.media.input_guard_args`: a playlist or list is a 415) and bounded by `prep`'s size
    limits (a frame over them: 413)."""
    at = poster_time(path, at, prep, duration)
    args = [ffmpeg_binary(), "-nostdin", "-v", "error", "-ss", f"{at:.3f}", *input_guard_args()]
    args += [*max_pixels_args(prep.limits.max_pixels), "-i", str(path), "-frames:v", "1"]
    args += ["-vf", f"scale={width}:-2", "-q:v", "4", "-f", "image2pipe", "-vcodec", "mjpeg", "pipe:1"]
    data = run_tool(args, prep.timeout_s, POSTER_MAX_BYTES, name)
    if not data:
        raise UnreadableMediaError(f"{name}: no frame could be decoded at {at:.3f} s")
    return data, at


def poster_folder(data_dir: Path, video_id: int) -> Path:
    return DataDir(data_dir).posters / str(video_id)


def cached_poster(
    sessions: Sessions, data_dir: Path, video_id: int, at: float, width: int, prep: PreprocessConfig
) -> tuple[bytes, float]:
    """`poster_jpeg` of a video's file (opened as the indexed one: 404 / 409 otherwise), from the poster cache
    when it holds this frame of this content, else decoded and cached."""
    entry, opened = open_catalog_file(sessions, video_id)
    try:
        key = f"{entry.sha256[:16]}-{opened.status.st_size}-{opened.status.st_mtime_ns}-{round(at * 1000)}-{width}"
        folder = poster_folder(data_dir, video_id)
        for hit in folder.glob(f"{key}-*.jpg"):
            with contextlib.suppress(OSError, ValueError):
                return hit.read_bytes(), int(hit.stem.rsplit("-", 1)[1]) / 1000
        if not entry.has_pictures:
            raise InvalidInput(f"{entry.name} has no pictures (an audio file): no poster")
        with named_errors(opened.fd, entry.name) as path:
            data, used = poster_jpeg(Path(path), at, width, prep, entry.name, entry.duration)
    finally:
        os.close(opened.fd)
    with contextlib.suppress(OSError):  # a full disk or a read-only data dir: the poster is still answered
        _cache(folder, f"{key}-{round(used * 1000)}.jpg", data)
    return data, used


def _cache(folder: Path, name: str, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)
    posters = sorted(folder.glob("*.jpg"), key=lambda p: p.stat().st_mtime_ns)
    for old in posters[:-POSTER_CACHE_PER_VIDEO]:
        old.unlink(missing_ok=True)


def forget_posters(data_dir: Path, video_id: int) -> None:
    """Drop a (deleted) video's cached posters."""
    shutil.rmtree(poster_folder(data_dir, video_id), ignore_errors=True)
