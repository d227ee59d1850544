"""The catalog's media files for the web page: a video's original file (players seek it with HTTP Range) and a
JPEG poster frame. Only files the catalog points at are ever opened: the routes take a catalog id, never a
path, and a video that is deleted or whose file is gone is a 404.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from indexer.catalog import Video, VideoStatus
from model.media import MediaError, UnreadableMediaError, ffmpeg_binary, run_tool
from model.probe import probe
from service.errors import InvalidInput, NotFound

POSTER_MAX_BYTES = 8 << 20  # a JPEG frame of at most 1280 px wide is far smaller
TIME_SLACK_S = 0.05  # container durations are rounded
EXTRA_TYPES = {".mkv": "video/x-matroska", ".webm": "video/webm", ".m4a": "audio/mp4", ".flac": "audio/flac"}


def catalog_file(sessions: sessionmaker, video_id: int) -> Path:
    """The media file of a video of the catalog (any state but deleted); 404 when unknown, deleted or gone."""
    with sessions() as session:
        video = session.get(Video, video_id)
        if video is None or video.status == VideoStatus.DELETED:
            state = "unknown" if video is None else "deleted"
            raise NotFound(f"no video {video_id} ({state})")
        uri = video.uri
    path = Path(uri)
    if not path.is_file():
        raise NotFound(f"the media file of video {video_id} is gone (it was at {uri})")
    return path


def clamped_time(at: float, duration: float) -> float:
    """`at` seconds inside a video of `duration` s (the last frame starts before the container's end); 422 past
    its end, beyond the rounding of container durations."""
    if at > duration + TIME_SLACK_S:
        raise InvalidInput(f"time {at:.3f} s is past the end of the video ({duration:.3f} s)")
    return max(0.0, min(at, duration - 0.1))


def media_type(path: Path) -> str:
    """The Content-Type of a media file, by its extension (what a browser needs to pick a decoder)."""
    return EXTRA_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def poster_jpeg(path: Path, at: float, width: int, timeout_s: float) -> tuple[bytes, float]:
    """The frame of a video at `at` s as a JPEG `width` px wide (aspect kept), and the time used (clamped
    inside the video; 422 past its end or for a file without pictures)."""
    try:
        info = probe(path, timeout_s)
    except MediaError as exc:
        raise InvalidInput(f"{path.name}: {exc}") from exc
    if not info.has_video:
        raise InvalidInput(f"{path.name} has no pictures (an audio file): no poster")
    if info.duration is not None:
        at = clamped_time(at, info.duration)
    args = [ffmpeg_binary(), "-nostdin", "-v", "error", "-ss", f"{at:.3f}", "-i", str(path), "-frames:v", "1"]
    args += ["-vf", f"scale={width}:-2", "-q:v", "4", "-f", "image2pipe", "-vcodec", "mjpeg", "pipe:1"]
    data = run_tool(args, timeout_s, POSTER_MAX_BYTES, path.name)
    if not data:
        raise UnreadableMediaError(f"{path.name}: no frame could be decoded at {at:.3f} s")
    return data, round(at, 3)
