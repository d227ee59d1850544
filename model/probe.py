"""Probing media before decoding it: streams, duration and rates (ffprobe, else ffmpeg's banner), and the
size limits (pixels per frame, frames).

A decompression bomb (a small file whose frames are huge) is refused before anything is decoded at its size:
first from the file's header read in Python (hachoir, no ffmpeg started, milliseconds), which can only refuse
(a header may lie, or omit or drop a dimension: hachoir drops any over 20,000); then by a probe whose decoders
are bounded (ffprobe's `-max_pixels`: the real stream parameters, from the codec's own headers, are read with
every frame buffer over the limit refused, so a probe's memory stays flat whatever the file claims); then from
the sizes the probe reports. The `MediaInfo` a bounded probe returns carries the bound, so every later decode
of it is bounded the same way (`model.media`). Every failure is a `MediaError` subclass (`model.media`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.media import (
    DEFAULT_TIMEOUT_S,
    MediaInfo,
    MediaTimeoutError,
    MediaTooLargeError,
    NoUsableStreamError,
    UnreadableMediaError,
    ffmpeg_binary,
    ffprobe_binary,
    input_guard_args,
    last_line,
    max_pixels_args,
    over_max_pixels,
    refused_input,
    regular_file,
    run_tool,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SizeLimits:
    """The largest frame (width x height) and the most frames a decode may meet; None: no limit."""

    max_pixels: int | None = None
    max_frames: int | None = None


def _too_large(name: str, width: float, height: float, frames: float | None, limits: SizeLimits) -> None:
    if limits.max_pixels is not None and width * height > limits.max_pixels:
        raise MediaTooLargeError(
            f"{name}: {int(width)}x{int(height)} pixels per frame; at most {limits.max_pixels} are allowed"
        )
    if limits.max_frames is not None and frames is not None and frames > limits.max_frames:
        raise MediaTooLargeError(f"{name}: {int(frames)} frames; at most {limits.max_frames} are allowed")


def check_header(path: str | os.PathLike[str], limits: SizeLimits) -> None:
    """Refuse a file whose header declares too many pixels or frames, reading the header only (hachoir, in
    Python, no ffmpeg started: a decompression bomb costs milliseconds). This check can only refuse: a header
    it cannot read, one without both dimensions (hachoir drops a value over 20,000) or one that lies (an mp4's
    `tkhd`/`avc1` may say 64x64 over a 16000x16000 H.264 stream) is no pass; the bounded probe decides."""
    if limits.max_pixels is None and limits.max_frames is None:
        return
    path = Path(path)
    regular_file(path)
    from hachoir.core import config as hachoir_config  # type: ignore[import-untyped]  # hachoir ships no hints
    from hachoir.metadata import extractMetadata  # type: ignore[import-untyped]  # (the same package)
    from hachoir.parser import createParser  # type: ignore[import-untyped]  # (the same package)

    hachoir_config.quiet = True
    try:
        parser = createParser(str(path))  # None: a format hachoir does not know
        if parser is None:
            return
        with parser:
            metadata = extractMetadata(parser)
    except Exception as exc:  # any parser failure: the header says nothing, ffprobe decides
        log.debug("%s: no header sizes (%s)", path.name, exc)
        return
    if metadata is None or not (metadata.has("width") and metadata.has("height")):
        return
    rate = metadata.get("frame_rate") if metadata.has("frame_rate") else None
    duration = metadata.get("duration").total_seconds() if metadata.has("duration") else None
    frames = rate * duration if rate and duration else None
    _too_large(path.name, metadata.get("width"), metadata.get("height"), frames, limits)


def check_sizes(info: MediaInfo, limits: SizeLimits) -> None:
    """Refuse what the probe found too large (pixels per frame, frames), before anything is decoded."""
    if info.width is None or info.height is None:
        return
    frames = info.frames or (info.duration * info.frame_rate if info.duration and info.frame_rate else None)
    _too_large(info.path.name, info.width, info.height, None if info.still_image else frames, limits)


def probe(
    path: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT_S, limits: SizeLimits | None = None
) -> MediaInfo:
    """Streams, duration, rates of a file. Raises UnreadableMediaError for anything that is not media,
    UnsupportedMediaError for a container or protocol the allow-lists refuse (`model.media.input_guard_args`: a
    playlist, a concat list, an image-sequence pattern name), NotRegularFileError for a FIFO or device,
    MediaTooLargeError past `limits`: from the header, from a decoder of the probe (bounded by
    `limits.max_pixels`) or from the sizes the probe found. The info returned carries `limits.max_pixels`:
    every decode of it is bounded by it too."""
    path = Path(path)
    if regular_file(path).st_size == 0:
        raise UnreadableMediaError(f"{path}: empty file")
    max_pixels = limits.max_pixels if limits is not None else None
    if limits is not None:
        check_header(path, limits)
    prober = ffprobe_binary()
    if prober:
        args = [prober, "-v", "error", *input_guard_args(), *max_pixels_args(max_pixels)]
        args += ["-print_format", "json", "-show_format", "-show_streams", str(path)]
        info = _info_from_ffprobe(path, json.loads(run_tool(args, timeout, 1 << 22, f"{path.name}: probe")))
    else:
        info = _probe_with_ffmpeg(path, timeout, max_pixels)
    if not info.has_audio and info.video_codec is None:
        raise NoUsableStreamError(f"{path.name}: no audio or video stream in this file")
    if limits is not None:
        check_sizes(info, limits)
    return dataclasses.replace(info, max_pixels=max_pixels)


def _number(value: str | float | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):  # ffprobe's JSON may hold anything there
        return None
    return number if np.isfinite(number) and number > 0 else None


def _rate(text: str | None) -> float | None:
    if not text or "/" not in text:
        return _number(text)
    num, den = (_number(part) for part in text.split("/", 1))
    return num / den if num and den else None


def _info_from_ffprobe(path: Path, data: dict[str, Any]) -> MediaInfo:
    streams = data.get("streams", [])
    fmt = data.get("format", {})
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    format_name = fmt.get("format_name", "")
    still = video is not None and (
        video.get("disposition", {}).get("attached_pic") == 1 or format_name.endswith("_pipe")
    )
    stream_durations = [_number(s.get("duration")) for s in (audio, video) if s is not None]
    known = [d for d in stream_durations if d is not None]
    return MediaInfo(
        path=path,
        format_name=format_name,
        duration=max(known) if known else _number(fmt.get("duration")),
        audio_codec=audio.get("codec_name") if audio else None,
        sample_rate=int(audio["sample_rate"]) if audio and audio.get("sample_rate") else None,
        channels=audio.get("channels") if audio else None,
        video_codec=video.get("codec_name") if video else None,
        width=video.get("width") or None if video else None,  # 0: unknown (a bounded decoder refused it)
        height=video.get("height") or None if video else None,
        frame_rate=_rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")) if video else None,
        still_image=still,
        frames=int(_number(video.get("nb_frames")) or 0) or None if video else None,
        video_duration=_stream_duration(video) if video else None,
    )


def _stream_duration(stream: dict[str, Any]) -> float | None:
    """A stream's own duration: ffprobe's field, else the DURATION tag Matroska muxers write (HH:MM:SS.f)."""
    if (seconds := _number(stream.get("duration"))) is not None:
        return seconds
    tag = next((v for k, v in stream.get("tags", {}).items() if k.upper() == "DURATION"), None)
    parts = str(tag).split(":") if tag else []
    if len(parts) != 3:
        return None
    hours, minutes, rest = (_number(part) or 0.0 for part in parts)
    return _number(hours * 3600 + minutes * 60 + rest)


_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_INPUT = re.compile(r"Input #0, ([\w,]+), from")
_AUDIO = re.compile(r"Stream #0:\d+.*?: Audio: (\w+).*?, (\d+) Hz, ([^,]+)")
_VIDEO = re.compile(r"Stream #0:\d+.*?: Video: (\w+).*?, (\d+)x(\d+)")
_FPS = re.compile(r"Stream #0:\d+.*?: Video: [^\n]*?, ([\d.]+) fps")


def _probe_with_ffmpeg(path: Path, timeout: float, max_pixels: int | None) -> MediaInfo:
    """Fallback without ffprobe (imageio-ffmpeg ships none): parse `ffmpeg -i`'s report (decoders bounded)."""
    args = [ffmpeg_binary(), "-hide_banner", "-nostdin", *input_guard_args(), *max_pixels_args(max_pixels)]
    args += ["-i", str(path)]
    try:
        proc = subprocess.run(args, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise MediaTimeoutError(f"{path.name}: probe: ffmpeg did not finish within {timeout:.0f} s") from exc
    if (refused := over_max_pixels(proc.stderr) or refused_input(proc.stderr)) is not None:
        raise type(refused)(f"{path.name}: probe: {refused}")
    report = proc.stderr.decode("utf-8", "replace")[-65536:]
    fmt = _INPUT.search(report)
    if fmt is None:
        raise UnreadableMediaError(f"{path.name}: not a readable media file: {last_line(report)}")
    duration = _DURATION.search(report)
    audio, video, fps = _AUDIO.search(report), _VIDEO.search(report), _FPS.search(report)
    channels = audio.group(3).strip() if audio else ""
    return MediaInfo(
        path=path,
        format_name=fmt.group(1),
        duration=int(duration[1]) * 3600 + int(duration[2]) * 60 + float(duration[3]) if duration else None,
        audio_codec=audio.group(1) if audio else None,
        sample_rate=int(audio.group(2)) if audio else None,
        channels={"mono": 1, "stereo": 2}.get(channels, int(channels.split()[0]) if channels[:1].isdigit() else None),
        video_codec=video.group(1) if video else None,
        width=int(video.group(2)) or None if video else None,
        height=int(video.group(3)) or None if video else None,
        frame_rate=_number(fps.group(1)) if fps else None,
        still_image=bool(video) and fmt.group(1).endswith("_pipe"),
    )


# ------------------------------------------------------------------------------------ decoding
