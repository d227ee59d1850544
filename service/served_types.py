"""What a media answer says its file is: the Content-Type of what the file *is* (from the probe of the opened
file: its container and whether it has moving pictures), never from the name it was sent with, and a
Content-Disposition naming it safely whatever that name holds.

A name says nothing about content (a valid mp4 with HTML appended, uploaded as `report.html`, is an mp4): the
type is the container ffprobe identified (`MediaInfo.format_name`, which the readers' allow-list bounds,
`model.media.ACCEPTED_FORMATS`), mapped here to the type browsers know it by; anything else, or a file the probe
cannot read, is `application/octet-stream`. No container that can hold script is ever given its type (an SVG
picture: `svg_pipe`, an HTML or text file: ffmpeg's `tty`). The catalog does not record the container, so the
service probes the opened descriptor once per file content and keeps the answer (`TypeCache`).

The name (OWASP's file-upload guidance): the last part of a path only, control / format (bidi) / separator
characters replaced by `_`, at most `MAX_NAME_CHARS`, and ending with an extension of the served type (added when
the sent one is not: `report.html` is served as `report.html.mp4`, so a saved copy opens as what it is). The
header carries it twice: an ASCII `filename="..."` with anything but a few safe characters replaced, and the
whole name UTF-8 percent-encoded (`filename*`, RFC 5987 / 6266): no quote, backslash, CR, LF or control character
ever reaches the header.
"""

from __future__ import annotations

import logging
import os
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from indexer.ingest.files import Opened, fd_path
from model.media import MediaError, MediaInfo, MediaTimeoutError
from model.probe import SizeLimits, probe

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 150  # a served name's length (the extension kept); file systems allow 255 bytes
CACHED_TYPES = 4096  # files whose type is kept (a few hundred bytes each)
HEAD_BYTES = 64  # a Matroska file's EBML header, whose DocType says matroska or webm, lies in its first bytes
ASCII_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !#$&'()+,-.@[]^_`{}~")
UNSAFE_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")  # control, format (bidi), ..., line breaks


@dataclass(frozen=True)
class ServedType:
    """A Content-Type and the file name extensions that fit it (the first is added where the name has none)."""

    media_type: str
    extensions: tuple[str, ...]


OCTET_STREAM = ServedType("application/octet-stream", (".bin",))
MP4 = (ServedType("video/mp4", (".mp4", ".m4v", ".mov", ".3gp", ".3g2")), ServedType("audio/mp4", (".m4a", ".mp4")))
WEBM = (ServedType("video/webm", (".webm",)), ServedType("audio/webm", (".webm", ".weba")))
MATROSKA = (ServedType("video/x-matroska", (".mkv",)), ServedType("audio/x-matroska", (".mka", ".mkv")))

# The first demuxer name ffprobe reports (`mov,mp4,m4a,3gp,3g2,mj2` -> mov) -> (with video, audio only).
BY_FORMAT: dict[str, tuple[ServedType, ServedType]] = {
    "mov": MP4,
    "matroska": MATROSKA,  # webm when its DocType says so (`served_type`)
    "avi": (ServedType("video/x-msvideo", (".avi",)),) * 2,
    "mpeg": (ServedType("video/mpeg", (".mpg", ".mpeg")), ServedType("audio/mpeg", (".mpg", ".mpeg", ".mp2"))),
    "mpegts": (ServedType("video/mp2t", (".ts", ".m2ts")),) * 2,
    "wav": (ServedType("audio/wav", (".wav",)),) * 2,
    "flac": (ServedType("audio/flac", (".flac",)),) * 2,
    "mp3": (ServedType("audio/mpeg", (".mp3",)),) * 2,
    "ogg": (ServedType("video/ogg", (".ogv", ".ogg")), ServedType("audio/ogg", (".ogg", ".oga", ".opus"))),
    "aac": (ServedType("audio/aac", (".aac",)),) * 2,
    "png_pipe": (ServedType("image/png", (".png",)),) * 2,
    "jpeg_pipe": (ServedType("image/jpeg", (".jpg", ".jpeg")),) * 2,
    "webp_pipe": (ServedType("image/webp", (".webp",)),) * 2,
    "bmp_pipe": (ServedType("image/bmp", (".bmp",)),) * 2,
    "gif": (ServedType("image/gif", (".gif",)),) * 2,
}
WEBM_DOCTYPE = b"\x42\x82\x84webm"  # the EBML DocType element (id 0x4282, 4 bytes): "webm"


def served_type(info: MediaInfo, head: bytes) -> ServedType:
    """The type of a probed file (`head`: its first HEAD_BYTES, for Matroska's DocType). Video when it has
    moving pictures (a cover picture is no video); application/octet-stream for any other container."""
    family = BY_FORMAT.get(info.format_name.split(",", 1)[0])
    if family is None:
        return OCTET_STREAM
    if family is MATROSKA and WEBM_DOCTYPE in head:
        family = WEBM
    return family[0] if info.has_video else family[1]


def probe_served_type(fd: int, timeout_s: float, max_pixels: int | None) -> ServedType:
    """`served_type` of an opened file: one probe of its descriptor (`/proc/<pid>/fd/<n>`, decoders bounded by
    `max_pixels`; no frame limit: the type does not depend on the length) and a read of its first bytes. Raises
    what the probe raises (a `MediaError`) or an OSError."""
    info = probe(fd_path(fd), timeout_s, SizeLimits(max_pixels=max_pixels))
    return served_type(info, os.pread(fd, HEAD_BYTES, 0))


class TypeCache:
    """Served types by file content (sha256, size), the `CACHED_TYPES` most recently used: one probe per content
    per process. A file the probe cannot read is cached as an octet stream; a probe that timed out is not (the
    machine may only have been busy)."""

    def __init__(self, capacity: int = CACHED_TYPES) -> None:
        self.capacity = capacity
        self._types: OrderedDict[tuple[str, int], ServedType] = OrderedDict()
        self._lock = threading.Lock()

    def served_type(self, sha256: str, opened: Opened, timeout_s: float, max_pixels: int | None) -> ServedType:
        """The type to serve an opened indexed file as (never raises: unknown is application/octet-stream)."""
        key = (sha256, opened.status.st_size)
        with self._lock:
            if (known := self._types.get(key)) is not None:
                self._types.move_to_end(key)
                return known
        try:
            served = probe_served_type(opened.fd, timeout_s, max_pixels)
        except MediaTimeoutError as exc:
            log.warning("file %s: %s; served as %s this time", sha256[:16], exc, OCTET_STREAM.media_type)
            return OCTET_STREAM
        except (MediaError, OSError) as exc:
            log.warning("file %s: type unknown (%s); served as %s", sha256[:16], exc, OCTET_STREAM.media_type)
            served = OCTET_STREAM
        with self._lock:
            self._types[key] = served
            while len(self._types) > self.capacity:
                self._types.popitem(last=False)
        return served


def _visible(name: str) -> str:
    """The last part of a /-separated path, control / format / line-break characters as `_`, spaces and dots
    stripped from its ends (a backslash is kept: shown names write hidden characters as `\\uXXXX`)."""
    last = name.rsplit("/", 1)[-1]
    kept = "".join("_" if unicodedata.category(c) in UNSAFE_CATEGORIES else c for c in last)
    return kept.strip(" .")


def served_name(name: str, served: ServedType) -> str:
    """The name a file is served under: `_visible`, at most MAX_NAME_CHARS, with an extension of its type."""
    shown = _visible(name) or "media"
    suffix = Path(shown).suffix
    if suffix.lower() not in served.extensions:
        shown, suffix = shown + served.extensions[0], served.extensions[0]
    stem = shown[: len(shown) - len(suffix)]
    return stem[: MAX_NAME_CHARS - len(suffix)] + suffix


def ascii_name(name: str) -> str:
    """`name` in the safe ASCII of a quoted `filename="..."`: accents dropped, anything else unsafe as `_`."""
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(c if c in ASCII_SAFE else "_" for c in decomposed if not unicodedata.combining(c))


def content_disposition(name: str, served: ServedType) -> str:
    """`inline` with the served name: ASCII in `filename`, the whole UTF-8 name in `filename*` (RFC 5987)."""
    shown = served_name(name, served)
    return f"inline; filename=\"{ascii_name(shown)}\"; filename*=UTF-8''{quote(shown, safe='')}"


TYPES = TypeCache()  # the process's: a type is a property of the content, whichever app or data dir serves it
