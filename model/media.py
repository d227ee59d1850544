"""Media decoding with ffmpeg: audio (16 kHz, first channel) and frames at given times, still pictures
(probing and size limits: `model.probe`).

ffmpeg is the system binary when there is one (the official fbank is reproduced exactly with Debian's
ffmpeg), else the one the imageio-ffmpeg wheel ships; `use_ffmpeg` (given the CAVSYNC_FFMPEG setting by the
composition root) overrides both. Commands are built with ffmpeg-python and run as argument lists (never
through a shell), with a timeout and a bound on how many bytes they may write. Every failure is a `MediaError` subclass.

Every ffmpeg and ffprobe run over a file (`model.probe`, the decoders here, the service's posters) reads that file
only: `input_guard` / `input_guard_args` (input options, before `-i`) is the one allow-list. Containers (ffmpeg's
demuxer names): mov,mp4,m4a,3gp,3g2,mj2 (one demuxer), matroska,webm, avi, mpeg, mpegts, wav, flac, mp3, ogg, aac;
pictures png_pipe, jpeg_pipe, webp_pipe, bmp_pipe, gif; protocols: file. No playlist (hls), concat list,
image-sequence pattern (image2), network or device input is opened; a refusal is an `UnsupportedMediaError` (415)
naming the format and what to send (`refused_input`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from stat import S_ISREG

import ffmpeg
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0


class MediaError(Exception):
    """A media file that cannot be turned into model inputs; the message says what to do."""


class UnreadableMediaError(MediaError):
    """Empty, truncated, corrupt, or not a media file at all."""


class UnsupportedMediaError(MediaError):
    """Readable, but not something we can use (a still image where a video is needed, ...)."""


class NoUsableStreamError(MediaError):
    """The file has no audio or video stream that the request needs."""


class MediaTooLongError(MediaError):
    """Longer than the configured maximum duration, or more output than expected."""


class MediaTooShortError(MediaError):
    """Shorter than the minimum the request needs (an audio query under 1 s, say)."""


class MediaTimeoutError(MediaError):
    """ffmpeg did not finish in time."""


class MediaTooLargeError(MediaTooLongError):
    """More pixels per frame, or more frames, than allowed (a decompression bomb): refused before decoding."""


class NotRegularFileError(MediaError):
    """A FIFO, a device or a socket: never opened (reading one could block forever)."""


@dataclass(frozen=True)
class MediaInfo:
    """What a probe found. Durations in seconds; None where the container does not say."""

    path: Path
    format_name: str
    duration: float | None
    audio_codec: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    video_codec: str | None = None
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None
    still_image: bool = False
    frames: int | None = None  # frames of the video stream, when the container says
    max_pixels: int | None = None  # every decoder of this media refuses a larger frame (ffmpeg's -max_pixels)
    video_duration: float | None = None  # the video stream's own end (an audio track may outlast it)

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None

    @property
    def has_video(self) -> bool:
        return self.video_codec is not None and not self.still_image


# ------------------------------------------------------------------------------------ binaries
_configured_ffmpeg: str | None = None  # set by the composition root from its settings (`use_ffmpeg`)


def use_ffmpeg(binary: str | None) -> None:
    """Use this ffmpeg binary (None: the system one, else imageio-ffmpeg's); its ffprobe sibling when present."""
    global _configured_ffmpeg
    _configured_ffmpeg = binary or None
    ffmpeg_binary.cache_clear()
    ffprobe_binary.cache_clear()


def configured_ffmpeg() -> str | None:
    """The binary given to `use_ffmpeg` (what a spawned worker process is configured with), or None."""
    return _configured_ffmpeg


@lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """Path of the ffmpeg to use: the configured one (`use_ffmpeg`), the system one, else imageio-ffmpeg's."""
    configured = _configured_ffmpeg or shutil.which("ffmpeg")
    if configured:
        return configured
    import imageio_ffmpeg

    binary = imageio_ffmpeg.get_ffmpeg_exe()
    log.warning("no system ffmpeg: using imageio-ffmpeg's %s (fbank matches the official one only to ~1e-3)", binary)
    return str(binary)


@lru_cache(maxsize=1)
def ffprobe_binary() -> str | None:
    sibling = Path(ffmpeg_binary()).with_name("ffprobe")
    return str(sibling) if sibling.is_file() else shutil.which("ffprobe")


# ------------------------------------------------------------------------------------ what may be opened
# The demuxers a reader may open (names as `ffmpeg -demuxers` lists them; ffmpeg accepts a demuxer when any part of
# its comma-separated name is listed): MEDIA_SUFFIXES' containers (indexer.ingest.pipeline), the browsers' recordings
# (webm, mp4, ogg) and still pictures, read whole from the one file by the *_pipe demuxers (never image2, whose
# name can be a sequence pattern). Protocols: a path only (/proc/<pid>/fd/<n> too), never concat:, http:, pipe:...
ACCEPTED_FORMATS = (
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpeg,mpegts,"  # .mp4 .m4v .mov .m4a, .mkv .webm, .avi, .mpg, .ts
    "wav,flac,mp3,ogg,aac,"  # .ogg .oga .opus; ADTS .aac
    "png_pipe,jpeg_pipe,webp_pipe,bmp_pipe,gif"
)
ACCEPTED_PROTOCOLS = "file"
ACCEPTED_NAMES = (
    "mp4, mov, m4a, mkv, webm, avi, mpg, ts, wav, flac, mp3, ogg, opus, aac; pictures: png, jpeg, webp, bmp, gif"
)


def input_guard() -> dict[str, str]:
    """The input options that confine ffmpeg / ffprobe to the file given (the one allow-list, see the module)."""
    return {"format_whitelist": ACCEPTED_FORMATS, "protocol_whitelist": ACCEPTED_PROTOCOLS}


def input_guard_args() -> list[str]:
    """`input_guard` as command-line arguments, to put before the `-i` of every input read from a user's file."""
    return [arg for name, value in input_guard().items() for arg in (f"-{name}", value)]


# What ffmpeg logs when the allow-lists refuse an input: the demuxer (the log line's context) or the protocol.
_FORMAT_REFUSED = re.compile(rb"\[([\w,]+) @ (?:0x)?[0-9a-fA-F]+\] Format not on whitelist")
_PROTOCOL_REFUSED = re.compile(rb"Protocol '([^']*)' not on whitelist")


def refused_input(report: bytes) -> UnsupportedMediaError | None:
    """The error for an input the allow-lists refused, as ffmpeg reported it in `report` (its stderr), if any."""
    if (found := _FORMAT_REFUSED.search(report)) is not None:
        kind = f"format {found.group(1).decode('ascii', 'replace')}"
    elif (found := _PROTOCOL_REFUSED.search(report)) is not None:
        kind = f"protocol {found.group(1).decode('ascii', 'replace')}"
    else:
        return None
    return UnsupportedMediaError(f"{kind} is not accepted; send a media file ({ACCEPTED_NAMES})")


# ------------------------------------------------------------------------------------ running
# What a decoder bounded by -max_pixels logs (libavutil's av_image_check_size2) when a frame is larger.
_OVER_MAX_PIXELS = re.compile(rb"Picture size (\d+)x(\d+) exceeds specified max pixel count (\d+)")


def max_pixels_args(max_pixels: int | None) -> list[str]:
    """The input option that bounds every decoder ffmpeg or ffprobe opens for the next input (none: no bound)."""
    return [] if max_pixels is None else ["-max_pixels", str(max_pixels)]


def over_max_pixels(report: bytes) -> MediaTooLargeError | None:
    """The error a bounded decoder reported in `report` (its stderr) for a frame over -max_pixels, if any."""
    found = _OVER_MAX_PIXELS.search(report)
    if found is None:
        return None
    width, height, limit = (int(g) for g in found.groups())
    return MediaTooLargeError(f"{width}x{height} pixels per frame; at most {limit} are allowed")


def run_tool(args: list[str], timeout: float, max_output: int, what: str) -> bytes:
    """Run a command (argument list), return stdout; bounded time and stdout size.

    Raises MediaTimeoutError past `timeout`, MediaTooLongError past `max_output` bytes,
    MediaTooLargeError when a decoder bounded by -max_pixels met a larger frame (whatever the exit status:
    ffprobe reports such a stream as 0x0 and succeeds), UnsupportedMediaError for an input the allow-lists
    refused (`input_guard_args`) and UnreadableMediaError on a non-zero exit, with the last lines ffmpeg wrote
    to stderr.
    """
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None  # both are pipes (PIPE above)
    stderr_tail: deque[bytes] = deque(maxlen=20)
    reported: list[MediaError] = []  # the first frame over -max_pixels or refused input that ffmpeg reported

    def read_stderr() -> None:
        for line in stderr:
            stderr_tail.append(line)
            if not reported and (error := over_max_pixels(line) or refused_input(line)) is not None:
                reported.append(error)

    drain = threading.Thread(target=read_stderr, daemon=True)
    drain.start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    chunks, size, overflow = [], 0, False
    try:
        while chunk := stdout.read(1 << 20):
            size += len(chunk)
            if size > max_output:
                overflow = True
                proc.kill()
                break
            chunks.append(chunk)
        proc.wait()
    finally:
        timed_out = not timer.is_alive() and not overflow and proc.returncode != 0
        timer.cancel()
        drain.join(timeout=5)
    message = b"".join(stderr_tail).decode("utf-8", "replace").strip()
    if reported:
        raise type(reported[0])(f"{what}: {reported[0]}")
    if overflow:
        raise MediaTooLongError(f"{what}: more output than the {max_output} bytes expected; the file is too long")
    if timed_out:
        raise MediaTimeoutError(f"{what}: ffmpeg did not finish within {timeout:.0f} s")
    if proc.returncode != 0:
        raise UnreadableMediaError(f"{what}: ffmpeg failed: {last_line(message)}")
    return b"".join(chunks)


def last_line(message: str) -> str:
    lines = [ln for ln in message.splitlines() if ln.strip()]
    return lines[-1] if lines else "no error message"


# ------------------------------------------------------------------------------------ probing
def regular_file(path: Path) -> os.stat_result:
    """The stat of a regular file; NotRegularFileError for a FIFO, device or socket, Unreadable if missing."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise UnreadableMediaError(f"{path}: no such file") from exc
    if not S_ISREG(stat.st_mode):
        raise NotRegularFileError(f"{path.name}: not a regular file (a FIFO, device or socket); give a media file")
    return stat


def seconds_arg(value: float) -> str:
    """A time as ffmpeg parses it: fixed-point, never exponent notation (`1e-05` is no valid duration)."""
    return f"{max(0.0, float(value)):.6f}"


@dataclass(frozen=True)
class FrameRequest:
    """`count` frames evenly spaced over `span` seconds (frame i at i * span / count), `size` px square.

    `fast` skips the decoder's deblocking filter (invisible after downscaling, ~20% faster on h264).
    """

    count: int
    span: float
    size: int
    fast: bool = True


@dataclass(frozen=True)
class DecodedWindow:
    audio: np.ndarray | None  # (samples,) float32, first channel
    frames: np.ndarray | None  # (n <= count, size, size, 3) uint8 RGB


DECODE_PREFIX = "cavsync-"  # decode folders in $TMPDIR: cavsync-<pid>-<random>, swept once <pid> is gone


def decode_folder_prefix() -> str:
    """The temp folder prefix of a decode: it names this process, so a sweep can tell a dead one's folder."""
    return f"{DECODE_PREFIX}{os.getpid()}-"


def decode_window(
    info: MediaInfo,
    start: float,
    seconds: float,
    frames: FrameRequest | None = None,
    audio: bool = True,
    sample_rate: int = 16000,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> DecodedWindow:
    """Decode `seconds` of media from `start` in ONE ffmpeg run: the audio and/or the chosen frames.

    Audio: the first channel (channelmap, no downmix), resampled by ffmpeg to `sample_rate` via 16-bit PCM and
    read as int16 / 32768, which reproduces the official preprocessing exactly. Frames: the fps filter
    takes, for each wanted time, the source frame on screen then (the last one at or before it, as the
    official int(i * N / T) frame index does), then the short side is resized to `size`
    (bicubic) and the centre cropped; only the chosen frames are scaled.
    """
    want_audio = audio and info.has_audio
    frames = frames if info.has_video else None  # the frames wanted, when there are any
    if not (want_audio or frames is not None):
        raise NoUsableStreamError(f"{info.path.name}: no {'audio' if audio else 'video'} stream")
    options = _seek(start) | _input_options(info)  # both inputs: guarded, every decoder opened bounded
    with tempfile.TemporaryDirectory(prefix=decode_folder_prefix()) as tmp:
        audio_path = Path(tmp) / "audio.s16"
        outputs = []
        if frames is not None:  # its own input: video decoding stops just past the last chosen frame
            read = min(seconds, frames.span * (frames.count - 1) / frames.count + 0.25)
            fast = {"skip_loop_filter": "all"} if frames.fast else {}
            video_input = ffmpeg.input(str(info.path), t=seconds_arg(read), **options, **fast)
            outputs.append(_frames_output(video_input, frames))
        if want_audio:
            audio_bytes = int((seconds + 1) * sample_rate * 2)
            outputs.append(
                ffmpeg.input(str(info.path), t=seconds_arg(seconds), **options)["a:0"]
                .filter("channelmap", map="0", channel_layout="mono")
                .output(str(audio_path), format="s16le", acodec="pcm_s16le", ar=sample_rate, fs=audio_bytes)
            )
        frame_bytes = frames.size * frames.size * 3 if frames is not None else 0
        max_stdout = frame_bytes * frames.count if frames is not None else 0
        raw = run_tool(_compile(ffmpeg.merge_outputs(*outputs)), timeout, max_stdout, f"{info.path.name}: decode")
        samples = np.fromfile(audio_path, dtype="<i2") if want_audio and audio_path.exists() else None
    decoded_frames = None
    if frames is not None:
        usable = len(raw) - len(raw) % frame_bytes
        decoded_frames = np.frombuffer(raw[:usable], dtype=np.uint8).reshape(-1, frames.size, frames.size, 3)
    decoded_audio = samples.astype(np.float32) / 32768.0 if samples is not None else None
    return DecodedWindow(decoded_audio, decoded_frames)


def _frames_output(source: ffmpeg.nodes.FilterableStream, request: FrameRequest) -> ffmpeg.nodes.OutputStream:
    picked = source["v:0"].filter("fps", fps=f"{request.count}/{request.span}", round="up")
    return _resize_and_crop(picked, request.size).output(
        "pipe:", format="rawvideo", pix_fmt="rgb24", vsync="passthrough", **{"frames:v": request.count}
    )


def decode_audio(
    info: MediaInfo,
    sample_rate: int = 16000,
    start: float = 0.0,
    duration: float | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> np.ndarray:
    """The first channel as float32 (see `decode_window`), `duration` seconds from `start` (all if None)."""
    seconds = duration if duration is not None else (info.duration or 0.0) + 1.0
    window = decode_window(info, start, seconds, audio=True, sample_rate=sample_rate, timeout=timeout)
    if window.audio is None:
        raise NoUsableStreamError(f"{info.path.name}: no audio stream")
    return window.audio


def decode_still(info: MediaInfo, size: int, at: float = 0.0, timeout: float = DEFAULT_TIMEOUT_S) -> np.ndarray:
    """One RGB frame (an image, or a video's frame at `at` seconds, `frame_time`), short side to `size`, centre
    crop. Returns uint8 (size, size, 3).
    """
    at = frame_time(info, at)
    stream = ffmpeg.input(str(info.path), **_seek(at), **_input_options(info))
    video = _resize_and_crop(stream.video, size)
    out = video.output("pipe:", format="rawvideo", pix_fmt="rgb24", **{"frames:v": 1})
    raw = run_tool(_compile(out), timeout, size * size * 3, f"{info.path.name}: image")
    if len(raw) < size * size * 3:
        raise UnreadableMediaError(f"{info.path.name}: no frame could be decoded at {at:.2f} s")
    return np.frombuffer(raw, dtype=np.uint8).reshape(size, size, 3)


def decode_picture(
    info: MediaInfo, width: int, height: int, at: float = 0.0, timeout: float = DEFAULT_TIMEOUT_S
) -> np.ndarray:
    """One RGB frame (an image, or a video's frame at `at` seconds, `frame_time`), the whole picture scaled
    (bicubic) to exactly width x height. Returns uint8 (height, width, 3)."""
    at = frame_time(info, at)
    stream = ffmpeg.input(str(info.path), **_seek(at), **_input_options(info))
    video = stream.video.filter("scale", w=width, h=height, flags="bicubic")
    out = video.output("pipe:", format="rawvideo", pix_fmt="rgb24", **{"frames:v": 1})
    size = width * height * 3
    raw = run_tool(_compile(out), timeout, size, f"{info.path.name}: image")
    if len(raw) < size:
        raise UnreadableMediaError(f"{info.path.name}: no frame could be decoded at {at:.2f} s")
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)


def frame_time(info: MediaInfo, at: float) -> float:
    """Where to seek for the frame of `info` at `at` s: 0 for a still image; a time past the start of the
    video's last frame moves back to it (ffmpeg keeps the frames that start at or after the time sought, so a
    seek past that start decodes nothing). The last frame starts one frame interval (of the probed rate; 0.1 s
    when unknown) before the video stream's end (the container's when the stream does not say), less 1 ms so
    that a time rounded to the millisecond stays on it."""
    if info.still_image:
        return 0.0
    end = info.video_duration or info.duration
    if end is None:
        return max(0.0, at)
    interval = 1.0 / info.frame_rate if info.frame_rate else 0.1
    return max(0.0, min(at, end - interval - 0.001))


def _seek(at: float) -> dict[str, str]:
    return {"ss": seconds_arg(at)} if at > 0 else {}


def _input_options(info: MediaInfo) -> dict[str, str]:
    """ffmpeg-python input options: the allow-lists (`input_guard`) and every decoder of the input bounded by
    `info.max_pixels` (see `run_tool`)."""
    bound = {} if info.max_pixels is None else {"max_pixels": str(info.max_pixels)}
    return input_guard() | bound


def _resize_and_crop(stream: ffmpeg.nodes.FilterableStream, size: int) -> ffmpeg.nodes.FilterableStream:
    """Short side to `size` (bicubic, aspect kept), then the centre `size` x `size` square."""
    scaled = stream.filter("scale", w=f"if(gt(iw,ih),-2,{size})", h=f"if(gt(iw,ih),{size},-2)", flags="bicubic")
    return scaled.filter("crop", size, size)


def _compile(stream: ffmpeg.nodes.OutputStream) -> list[str]:
    args: list[str] = stream.global_args("-nostdin", "-hide_banner", "-loglevel", "error").compile(cmd=ffmpeg_binary())
    return args
