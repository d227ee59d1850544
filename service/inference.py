"""Blocking model work for the API (run off the event loop): query media -> L2-normalised per-frame
tokens, and the audio-to-patch similarity map of a frame (JSON arrays or a PNG heat map).

A query gives one token per frame, every one of them (an audio query: one segment per 0.64 s, from
`load_query_audio`; a video: its frames, one per 0.64 s past one clip), up to the longest query
(`PreprocessConfig.max_query_s`); the search slides them over every video's track.
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
from model.similarity import normalize


@dataclass(frozen=True)
class QueryTokens:
    tokens: np.ndarray  # (T_q, D) float32, L2-normalised
    truncated: bool  # an indexed video longer than the longest query: only its first part is used
    decode_ms: float
    encode_ms: float


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


@torch.no_grad()
def encode(model: CAVMAESync, modality: str, batch: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """(N, ...) segments or frames -> normalised global tokens (N, D) numpy and patch tokens (N, P, D).

    The indexer's device policy: the model's device, bf16 autocast on CUDA.
    """
    device = next(model.parameters()).device
    run = model.encode_audio if modality == "audio" else model.encode_visual
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = run(batch.to(device))
    return normalize(out.global_tokens).cpu().numpy(), out.patch_tokens.float()


def audio_query(model: CAVMAESync, path: Path, prep: PreprocessConfig) -> QueryTokens:
    """Any file with an audio track -> (T_q, D) tokens, one per 0.64 s."""
    start = time.perf_counter()
    segments = load_query_audio(path, model.config, prep)  # (n, L, mel)
    decoded = time.perf_counter()
    tokens, _ = encode(model, "audio", segments)
    return QueryTokens(tokens, False, ms(decoded - start), ms(time.perf_counter() - decoded))


def video_query(model: CAVMAESync, path: Path, prep: PreprocessConfig) -> QueryTokens:
    """A video -> (T_q, D) visual tokens of its frames."""
    start = time.perf_counter()
    frames = load_query_frames(path, model.config, prep)
    decoded = time.perf_counter()
    tokens, _ = encode(model, "visual", frames)
    return QueryTokens(tokens, False, ms(decoded - start), ms(time.perf_counter() - decoded))


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
    _, patches = encode(model, "visual", frame[None])
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
