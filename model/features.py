"""Official preprocessing: fbank, per-frame audio segments, frame normalisation, clips, queries.

All sizes come from the model config (mel bins, segment length L, frames per clip T, image size) and
the `PreprocessConfig`, so every preset runs through the same code.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torchaudio

from model.config import ModelConfig
from model.media import (
    DecodedWindow,
    FrameRequest,
    MediaInfo,
    MediaTooLongError,
    MediaTooShortError,
    NoUsableStreamError,
    UnsupportedMediaError,
    decode_audio,
    decode_picture,
    decode_still,
    decode_window,
)
from model.probe import SizeLimits, probe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessConfig:
    """How media becomes model inputs. Defaults are the official CAV-MAE Sync preprocessing."""

    sample_rate: int = 16000
    frame_shift_ms: float = 10.0
    clip_fbank_frames: int = 1024  # 10.24 s of fbank frames per clip
    frame_span_s: float = 10.0  # the official code spreads the T frames over the first 10 s
    fbank_mean: float = -5.081
    fbank_std: float = 4.4849
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    stride_s: float = 10.24  # distance between the starts of consecutive clips of a long video
    fast_video_decode: bool = True  # skip the h264/hevc deblocking filter: invisible at 224 px, ~20% faster
    max_duration_s: float = 4 * 3600.0
    min_query_s: float = 1.0
    max_query_s: float = 180.0  # the longest query used (`max_query_frames`); a longer one is cut to it ...
    max_query_slack_s: float = 1.0  # ... when at most this much longer (`ffmpeg -t 180` gives 180.3-180.7 s), else 413
    timeout_s: float = 120.0
    max_pixels: int | None = 36_000_000  # width x height of a frame (8K UHD is 33.2 M); more: refused at probe
    max_frames: int | None = 1_000_000  # frames of a video stream (an hour at 240 fps is 864 k)

    @property
    def limits(self) -> SizeLimits:
        return SizeLimits(self.max_pixels, self.max_frames)

    @property
    def clip_s(self) -> float:
        return self.clip_fbank_frames * self.frame_shift_ms / 1000.0

    def frame_s(self, frames_per_clip: int) -> float:
        """Seconds between consecutive frames of a track (or a long query): clip_s / T."""
        return self.clip_s / frames_per_clip

    def max_query_frames(self, frames_per_clip: int) -> int:
        """The most frames a query uses: round(max_query_s / frame_s) (281 for 180 s at 0.64 s)."""
        return max(1, round(self.max_query_s / self.frame_s(frames_per_clip)))


@dataclass(frozen=True)
class Clip:
    """One clip: T frames and T aligned audio segments (either may be None when the file lacks it)."""

    frames: torch.Tensor | None  # (T, 3, H, W) ImageNet-normalised
    audio_segments: torch.Tensor | None  # (T, L, mel) normalised fbank
    start: float  # seconds from the start of the media
    duration: float  # real (unpadded) seconds covered

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m, x in (("audio", self.audio_segments), ("visual", self.frames)) if x is not None)


# ------------------------------------------------------------------------------------ audio
def fbank(waveform: np.ndarray | torch.Tensor, mel_bins: int, prep: PreprocessConfig) -> torch.Tensor:
    """Kaldi-compatible log-mel fbank of a mono waveform (mean removed first), (frames, mel_bins)."""
    wave = torch.as_tensor(waveform, dtype=torch.float32).reshape(1, -1)
    wave = wave - wave.mean()
    min_samples = int(prep.sample_rate * 0.025)  # one 25-ms window
    if wave.shape[1] < min_samples:
        wave = torch.nn.functional.pad(wave, (0, min_samples - wave.shape[1]))
    fbank: torch.Tensor = torchaudio.compliance.kaldi.fbank(
        wave,
        htk_compat=True,
        sample_frequency=prep.sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=mel_bins,
        dither=0.0,
        frame_shift=prep.frame_shift_ms,
    )
    return fbank


def pad_or_cut(spec: torch.Tensor, frames: int) -> torch.Tensor:
    """(n, mel) -> (frames, mel): zero rows appended (as the official code pads) or cut."""
    if spec.shape[0] >= frames:
        return spec[:frames]
    return torch.nn.functional.pad(spec, (0, 0, 0, frames - spec.shape[0]))


def segment_starts(total_frames: int, count: int, segment: int, hop: float) -> list[int]:
    """Start row of each segment: centred on round(i * hop), clamped inside [0, total_frames)."""
    starts = []
    for i in range(count):
        start = max(0, round(i * hop) - segment // 2)
        end = start + segment
        if end > total_frames:
            start = max(0, total_frames - segment)
        starts.append(start)
    return starts


def segments_from_fbank(spec: torch.Tensor, count: int, config: ModelConfig, prep: PreprocessConfig) -> torch.Tensor:
    """(n >= L, mel) fbank -> (count, L, mel) normalised segments centred every clip_frames / T rows."""
    hop = prep.clip_fbank_frames / config.frames_per_clip
    length = config.audio_frames
    starts = segment_starts(spec.shape[0], count, length, hop)
    segments = torch.stack([spec[s : s + length] for s in starts])  # (count, L, mel)
    return (segments - prep.fbank_mean) / prep.fbank_std


def clip_segments(waveform: np.ndarray, config: ModelConfig, prep: PreprocessConfig) -> torch.Tensor:
    """One clip's waveform -> (T, L, mel), exactly the official pipeline for a 10-s clip."""
    spec = pad_or_cut(fbank(waveform, config.mel_bins, prep), prep.clip_fbank_frames)
    return segments_from_fbank(spec, config.frames_per_clip, config, prep)


# ------------------------------------------------------------------------------------ frames
def normalize_frames(rgb: np.ndarray, prep: PreprocessConfig) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> float32 (n, 3, H, W), scaled to [0, 1] and ImageNet-normalised."""
    rgb = rgb if rgb.flags.writeable else rgb.copy()  # buffers from ffmpeg's pipe are read-only
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(prep.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.image_std).view(1, 3, 1, 1)
    return (x - mean) / std


def hold_last(frames: np.ndarray, count: int) -> np.ndarray:
    """Repeat the last frame where the video ended before all `count` frames were taken."""
    if len(frames) >= count:
        return frames[:count]
    return np.concatenate([frames, np.repeat(frames[-1:], count - len(frames), axis=0)])


# ------------------------------------------------------------------------------------ clips
def clip_starts(duration: float, prep: PreprocessConfig) -> list[float]:
    """Start of each clip: every stride, while the clip still starts inside the media (at least one).

    A tail shorter than 0.05 s (container rounding) does not make a clip of its own.
    """
    count = max(1, math.ceil((duration - 0.05) / prep.stride_s))
    return [round(k * prep.stride_s, 6) for k in range(count)]


def checked_duration(info: MediaInfo, prep: PreprocessConfig) -> float | None:
    """The media's duration (None: unknown); MediaTooLongError past `prep.max_duration_s`."""
    if info.duration is not None and info.duration > prep.max_duration_s:
        raise MediaTooLongError(
            f"{info.path.name}: {info.duration:.0f} s is longer than the {prep.max_duration_s:.0f} s allowed"
        )
    return info.duration


def load_clips(path: str | os.PathLike[str], config: ModelConfig, prep: PreprocessConfig | None = None) -> list[Clip]:
    """Decode a media file into consecutive clips of T frames and T aligned audio segments.

    A file of one clip or less gives one clip exactly as the official preprocessing does (frames over
    its first 10 s, padded). A longer one is a track (`track_clip`): one clip per stride (10.24 s),
    frame k of the file at k x clip_s / T seconds, each audio segment centred on its frame with the
    real audio on both sides (zero padding only at the ends of the media), so consecutive clips join
    without a seam. A file without audio (or without video) gives clips of the other modality only.
    Frames past the end of the video repeat its last frame. Raises a `MediaError` subclass for
    anything unusable.
    """
    prep = prep or PreprocessConfig()
    request = FrameRequest(config.frames_per_clip, prep.frame_span_s, config.image_size, prep.fast_video_decode)
    info = probe(path, prep.timeout_s, prep.limits)  # a bomb is refused here, before anything is decoded
    if info.still_image and not info.has_audio:
        raise UnsupportedMediaError(f"{info.path.name}: a still image ({info.video_codec}), not a video or audio file")
    duration = checked_duration(info, prep)
    starts = clip_starts(duration if duration is not None else prep.clip_s, prep)
    if duration is not None and len(starts) > 1:
        tracked = [track_clip(info, start, duration, config, prep) for start in starts]
        return [clip for clip in tracked if clip is not None]
    clips = []
    for start in starts:
        window = decode_window(
            info, start, prep.clip_s, request if info.has_video else None, True, prep.sample_rate, prep.timeout_s
        )
        clip = _clip_from_window(window, start, duration, config, prep)
        if clip is not None:  # a tail past the end of every stream is no clip
            clips.append(clip)
        if duration is None and (clip is None or clip.duration < prep.clip_s):
            break  # unknown length: stop at the first window that ran out of media
    if not clips:
        raise NoUsableStreamError(f"{info.path.name}: neither audio samples nor video frames could be decoded")
    return clips


def _clip_from_window(
    window: DecodedWindow, start: float, media_s: float | None, config: ModelConfig, prep: PreprocessConfig
) -> Clip | None:
    audio = window.audio if window.audio is not None and window.audio.size > 0 else None  # (samples,)
    decoded = window.frames if window.frames is not None and len(window.frames) > 0 else None  # (n, S, S, 3)
    if audio is None and decoded is None:
        return None
    segments = clip_segments(audio, config, prep) if audio is not None else None
    frames = normalize_frames(hold_last(decoded, config.frames_per_clip), prep) if decoded is not None else None
    if media_s is not None:
        covered = media_s - start
    else:  # what was decoded tells
        audio_s = audio.size / prep.sample_rate if audio is not None else 0.0
        frames_s = len(decoded) * prep.frame_span_s / config.frames_per_clip if decoded is not None else 0.0
        covered = max(audio_s, frames_s)
    return Clip(frames, segments, start, max(0.0, min(prep.clip_s, covered)))


def track_clip(
    info: MediaInfo, start: float, media_s: float, config: ModelConfig, prep: PreprocessConfig
) -> Clip | None:
    """The clip at `start` of a track: T frames at start + k x clip_s / T and the audio segments centred
    on them, cut from audio decoded with half a segment of context on both sides."""
    frames_per_clip, step = config.frames_per_clip, prep.frame_s(config.frames_per_clip)
    frames = None
    if info.has_video:
        request = FrameRequest(frames_per_clip, prep.clip_s, config.image_size, prep.fast_video_decode)
        window = decode_window(info, start, prep.clip_s, request, False, prep.sample_rate, prep.timeout_s)
        if window.frames is not None and len(window.frames) > 0:
            frames = normalize_frames(hold_last(window.frames, frames_per_clip), prep)
    segments = None
    if info.has_audio:
        context = (config.audio_frames // 2 + 4) * prep.frame_shift_ms / 1000.0
        begin = max(0.0, start - context)
        wave = decode_audio(info, prep.sample_rate, begin, start - begin + prep.clip_s + context, prep.timeout_s)
        if wave.size > 0:
            centres = [start - begin + k * step for k in range(frames_per_clip)]
            segments = centred_segments(wave, centres, config, prep)
    if frames is None and segments is None:
        return None
    return Clip(frames, segments, start, max(0.0, min(prep.clip_s, media_s - start)))


def centred_segments(
    waveform: np.ndarray, centres: list[float], config: ModelConfig, prep: PreprocessConfig
) -> torch.Tensor:
    """(count, L, mel) normalised segments of the waveform's fbank, segment i centred at centres[i]
    seconds (fbank row round(centre / shift)), zero rows where it reaches past the waveform."""
    spec = fbank(waveform, config.mel_bins, prep)
    length = config.audio_frames
    rows = [round(c * 1000.0 / prep.frame_shift_ms) - length // 2 + length for c in centres]
    tail = max(length, max(rows) + length - (spec.shape[0] + length))
    padded = torch.nn.functional.pad(spec, (0, 0, length, tail))  # row r of spec is row r + L here
    segments = torch.stack([padded[r : r + length] for r in rows])  # (count, L, mel)
    return (segments - prep.fbank_mean) / prep.fbank_std


# ------------------------------------------------------------------------------------ queries
def mirrored_rows(spec: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """(n, mel) -> (before + n + after, mel): the rows continued past both ends as in a mirror (row -1 is
    row 0, row n is row n - 1), reflected again as often as a padding longer than the rows needs."""
    count = spec.shape[0]
    rows = torch.arange(-before, count + after) % (2 * count)
    return spec[torch.where(rows < count, rows, 2 * count - 1 - rows)]


def query_segments(waveform: np.ndarray, config: ModelConfig, prep: PreprocessConfig) -> torch.Tensor:
    """A query waveform of any length -> (n, L, mel): one segment per frame at the clip frame rate.

    n = max(1, round(seconds * T / clip_s)) and segment i is centred at i * clip_s / T seconds, as a
    clip's are. A query of at least one clip is cut like clips (windows clamped inside the audio, so its
    first clip gives exactly a clip's segments). A shorter query's windows stay centred on their own
    frames (clamping would make the first segments of a 3-s query one identical window and lose its
    order in time) and reach past its ends, where its fbank rows continue mirrored (`mirrored_rows`)
    rather than as zero rows: a track's windows hold real sound on both sides, which a mirror resembles
    and silence does not (3-s excerpts of `tests/service/test_moments.py`'s corpus placed within 80%
    coverage: 98/100 mirrored, 89/100 with zero rows, 72/100 with the query tiled).
    """
    spec = fbank(waveform, config.mel_bins, prep)
    hop = prep.clip_fbank_frames / config.frames_per_clip
    count = max(1, round(spec.shape[0] / hop))
    if count >= config.frames_per_clip:
        return segments_from_fbank(pad_or_cut(spec, max(spec.shape[0], prep.clip_fbank_frames)), count, config, prep)
    length = config.audio_frames
    padded = mirrored_rows(spec, length // 2, length)  # row r of spec is row r + L/2 here
    starts = [round(i * hop) for i in range(count)]  # centre i * hop - L/2, shifted by the L/2 rows of padding
    segments = torch.stack([padded[s : s + length] for s in starts])  # (count, L, mel)
    return (segments - prep.fbank_mean) / prep.fbank_std


class QueryInput(NamedTuple):
    """A query's model inputs, one per frame of the query (every clip_s / T seconds), and whether they cover
    less than the media given."""

    inputs: torch.Tensor  # (n, L, mel) audio segments or (n, 3, H, W) frames, n <= prep.max_query_frames(T)
    truncated: bool  # the media holds more frames than the longest query: its first max_query_frames are used


def _query_too_long(info: MediaInfo, what: str, prep: PreprocessConfig) -> None:
    """MediaTooLongError for a query over the longest one and its slack (a cut made by `ffmpeg -t 180` lasts
    180.3-180.7 s: accepted, its first `max_query_s` used)."""
    if info.duration is not None and info.duration > prep.max_query_s + prep.max_query_slack_s:
        raise MediaTooLongError(
            f"{info.path.name}: lasts {info.duration:.1f} s; {what} may last {prep.max_query_s:.0f} s at most "
            f"(up to {prep.max_query_slack_s:g} s more is accepted and cut to that)"
        )


def read_query_audio(
    path: str | os.PathLike[str], config: ModelConfig, prep: PreprocessConfig | None = None
) -> QueryInput:
    """An audio query (any file with an audio track, a video's included) -> (n, L, mel) segments
    (`query_segments`), the first `prep.max_query_frames` of them, and whether that left any out."""
    prep = prep or PreprocessConfig()
    info = probe(path, prep.timeout_s, prep.limits)
    if info.still_image and not info.has_audio:
        raise UnsupportedMediaError(f"{info.path.name}: a still image ({info.video_codec}), not audio")
    if not info.has_audio:
        raise NoUsableStreamError(f"{info.path.name}: no audio track to search with")
    _query_too_long(info, "an audio query", prep)
    # the whole file, however long its container says it is (an unknown duration: up to the query's slack)
    wave = decode_audio(info, prep.sample_rate, 0.0, prep.max_query_s + prep.max_query_slack_s + 0.05, prep.timeout_s)
    seconds = wave.size / prep.sample_rate
    if seconds < prep.min_query_s:
        raise MediaTooShortError(
            f"{info.path.name}: lasts {seconds:.2f} s; an audio query must last {prep.min_query_s:.1f} s at least"
        )
    segments = query_segments(wave, config, prep)  # cut after: the last kept ones hold the sound past them
    longest = prep.max_query_frames(config.frames_per_clip)
    return QueryInput(segments[:longest], len(segments) > longest)


def load_query_audio(
    path: str | os.PathLike[str], config: ModelConfig, prep: PreprocessConfig | None = None
) -> torch.Tensor:
    """An audio query (any file with an audio track, a video's included) -> (n, L, mel) segments
    (`read_query_audio`'s inputs)."""
    return read_query_audio(path, config, prep).inputs


def read_query_frames(
    path: str | os.PathLike[str], config: ModelConfig, prep: PreprocessConfig | None = None
) -> QueryInput:
    """A video query's frames (n, 3, H, W): a video of one clip or less as a clip's are (n < T for a
    shorter one), a longer one every clip_s / T seconds, as a track's; the first `prep.max_query_frames` of
    them, and whether that left any out. Raises a MediaError."""
    prep = prep or PreprocessConfig()
    info = probe(path, prep.timeout_s, prep.limits)
    if info.still_image:
        raise UnsupportedMediaError(f"{info.path.name}: a still image ({info.video_codec}), not a video")
    if not info.has_video:
        raise NoUsableStreamError(f"{info.path.name}: no video track to search with")
    duration = checked_duration(info, prep)
    _query_too_long(info, "a video query", prep)
    longest, step = prep.max_query_frames(config.frames_per_clip), prep.frame_s(config.frames_per_clip)
    given: int | None = None  # the frames of the whole media
    if duration is not None and duration > prep.clip_s + 0.05:  # a track's frames: one every `step`
        given = max(1, round(duration / step))
        count = min(given, longest)  # only those used are decoded
        span = seconds = count * step
    else:  # a clip's frames (fewer for a shorter video), taken as the official code takes them
        count, span, seconds = config.frames_per_clip, prep.frame_span_s, prep.clip_s
    request = FrameRequest(count, span, config.image_size, prep.fast_video_decode)
    window = decode_window(info, 0.0, seconds, request, audio=False, timeout=prep.timeout_s)
    if window.frames is None or len(window.frames) == 0:
        raise NoUsableStreamError(f"{info.path.name}: no video frame could be decoded")
    frames = window.frames[:count]
    given = given if given is not None else len(frames)
    return QueryInput(normalize_frames(frames[:longest], prep), given > longest)


def load_query_frames(
    path: str | os.PathLike[str], config: ModelConfig, prep: PreprocessConfig | None = None
) -> torch.Tensor:
    """A video query's frames (n, 3, H, W) (`read_query_frames`'s inputs)."""
    return read_query_frames(path, config, prep).inputs


def load_image(
    path: str | os.PathLike[str], config: ModelConfig, prep: PreprocessConfig | None = None, at: float = 0.0
) -> torch.Tensor:
    """An image (or the frame of a video at `at` seconds) -> (3, H, W), preprocessed like clip frames."""
    prep = prep or PreprocessConfig()
    info = probe(path, prep.timeout_s, prep.limits)
    if info.video_codec is None:
        raise NoUsableStreamError(f"{info.path.name}: no image or video stream")
    if info.duration is not None and not info.still_image and at > info.duration:
        raise UnsupportedMediaError(f"{info.path.name}: time {at:.2f} s is past the end ({info.duration:.2f} s)")
    rgb = decode_still(info, config.image_size, at, prep.timeout_s)
    return normalize_frames(rgb[None], prep)[0]


@dataclass(frozen=True)
class Picture:
    """A whole picture (no crop) for localization: the model's input and what a person sees."""

    frame: torch.Tensor  # (3, h, w) normalised, short side = the model's image size, aspect kept
    display: np.ndarray  # uint8 (H', W', 3): the source's resolution, at most `max_display_height` high
    source_size: tuple[int, int]  # the source's (width, height) in pixels


def load_picture(
    path: str | os.PathLike[str],
    config: ModelConfig,
    prep: PreprocessConfig | None = None,
    at: float = 0.0,
    max_display_height: int = 720,
) -> Picture:
    """An image (or the frame of a video at `at` seconds) as a whole `Picture` (two scalings of one frame)."""
    prep = prep or PreprocessConfig()
    info = probe(path, prep.timeout_s, prep.limits)
    if info.video_codec is None or not info.width or not info.height:
        raise NoUsableStreamError(f"{info.path.name}: no image or video stream with a known size")
    if info.duration is not None and not info.still_image and at > info.duration:
        raise UnsupportedMediaError(f"{info.path.name}: time {at:.2f} s is past the end ({info.duration:.2f} s)")
    width, height, size = info.width, info.height, config.image_size
    scale = size / min(width, height)
    model_w, model_h = max(size, round(width * scale)), max(size, round(height * scale))
    shown_h = min(height, max_display_height)
    shown_w = max(1, round(width * shown_h / height))
    rgb = decode_picture(info, model_w, model_h, at, prep.timeout_s)
    display = decode_picture(info, shown_w, shown_h, at, prep.timeout_s)
    return Picture(normalize_frames(rgb[None], prep)[0], display, (width, height))
