"""Blocking model work for the API (run off the event loop): query media -> L2-normalised per-frame
tokens, and the audio-to-patch similarity map of a frame (JSON arrays or a PNG heat map).

A query longer than one clip (10.24 s) is searched with its first clip: the first T audio segments,
or the T frames of the first 10 s. A shorter query gives fewer frames (an audio query: one segment
per 0.64 s, from `load_query_audio`; a video: the frames it has), which the search slides over clips.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model import CAVMAESync, PreprocessConfig, load_query_audio, load_query_frames
from model.inference import frame_tokens
from model.network import Modality
from model.similarity import normalize


@dataclass(frozen=True)
class QueryTokens:
    tokens: np.ndarray  # (T_q, D) float32, L2-normalised
    truncated: bool  # longer than a clip: only the first clip is used
    decode_ms: float
    encode_ms: float


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def global_tokens(model: CAVMAESync, modality: Modality, batch: torch.Tensor) -> np.ndarray:
    """(N, ...) segments or frames -> normalised global tokens (N, D) float32 (`model.inference`)."""
    return frame_tokens(model, modality, batch).global_tokens.cpu().numpy()


def audio_query(model: CAVMAESync, path: Path, prep: PreprocessConfig) -> QueryTokens:
    """Any file with an audio track -> (T_q <= T, D) tokens of its first clip."""
    start = time.perf_counter()
    segments = load_query_audio(path, model.config, prep)  # (n, L, mel)
    decoded = time.perf_counter()
    frames = model.config.frames_per_clip
    tokens = global_tokens(model, "audio", segments[:frames])
    return QueryTokens(tokens, len(segments) > frames, ms(decoded - start), ms(time.perf_counter() - decoded))


def video_query(model: CAVMAESync, path: Path, prep: PreprocessConfig) -> QueryTokens:
    """A video -> (T_q <= T, D) visual tokens of its first clip."""
    start = time.perf_counter()
    frames, longer = load_query_frames(path, model.config, prep)
    decoded = time.perf_counter()
    tokens = global_tokens(model, "visual", frames)
    return QueryTokens(tokens, longer, ms(decoded - start), ms(time.perf_counter() - decoded))


def audio_segment(model: CAVMAESync, path: Path, at: float, prep: PreprocessConfig) -> tuple[torch.Tensor, float]:
    """The audio segment (1, L, mel) centred nearest `at` seconds (segment i is centred at i * clip_s / T),
    and its centre. Raises ValueError when `at` is past the end of the audio."""
    segments = load_query_audio(path, model.config, prep)  # (n, L, mel)
    step = prep.clip_s / model.config.frames_per_clip
    if at > len(segments) * step:
        raise ValueError(f"audio_time {at:.2f} s is past the end of the audio ({len(segments) * step:.2f} s)")
    index = min(len(segments) - 1, round(at / step))
    return segments[index : index + 1], index * step


@dataclass(frozen=True)
class Localization:
    grid: torch.Tensor  # (G, G) cosine of the audio token with each patch token
    upsampled: torch.Tensor  # (S, S) bilinear, the preprocessed frame's size
    peak_xy: tuple[int, int]  # pixel (x, y) of the maximum of `upsampled`
    peak_cell: tuple[int, int]  # (row, col) of the patch holding the peak


def localize(model: CAVMAESync, frame: torch.Tensor, audio_token: np.ndarray) -> Localization:
    """frame (3, S, S) preprocessed, audio_token (D,) normalised -> the similarity map and its peak."""
    patches = frame_tokens(model, "visual", frame[None]).patch_tokens
    side = model.config.visual_grid[0]
    audio = torch.from_numpy(np.ascontiguousarray(audio_token, dtype=np.float32)).to(patches.device)
    grid = (normalize(patches[0]) @ audio).view(side, side).cpu()
    size = frame.shape[-1]
    upsampled = F.interpolate(grid[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    y, x = divmod(int(torch.argmax(upsampled)), size)
    return Localization(grid, upsampled, (x, y), (y * side // size, x * side // size))


def _jet(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB in [0, 1], the classic jet colour map (blue low, red high)."""
    v = 4.0 * values[..., None]
    return np.clip(1.5 - np.abs(v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)


def heatmap_png(frame: torch.Tensor, upsampled: torch.Tensor, prep: PreprocessConfig, alpha: float = 0.5) -> bytes:
    """The preprocessed frame (3, S, S) with the map overlaid in jet colours, as PNG bytes."""
    mean, std = torch.tensor(prep.image_mean).view(3, 1, 1), torch.tensor(prep.image_std).view(3, 1, 1)
    rgb = (frame.cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    values = upsampled.numpy()
    span = float(values.max() - values.min())
    scaled = (values - values.min()) / span if span > 0 else np.zeros_like(values)
    blended = (1 - alpha) * rgb + alpha * _jet(scaled)
    buffer = io.BytesIO()
    Image.fromarray((blended * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
