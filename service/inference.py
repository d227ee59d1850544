"""Blocking model work for the API (run off the event loop): query media -> L2-normalised per-frame
tokens, and the localization map over a whole picture (model.localization; JSON or a PNG heat map).

A query gives one token per frame, every one of them (an audio query: one segment per 0.64 s, from
`read_query_audio`; a video: its frames, one per 0.64 s past one clip), up to the longest query
(`PreprocessConfig.max_query_s`: a file up to `max_query_slack_s` longer is cut to it, reported `truncated`, a
longer one refused); the search slides them over every video's track.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from model import CAVMAESync, PreprocessConfig, load_query_audio
from model.features import read_query_audio, read_query_frames
from model.inference import autocast, frame_tokens, model_device
from model.localization import LocalizationHead, PictureMap, picture_map
from model.network import Modality


@dataclass(frozen=True)
class QueryTokens:
    tokens: np.ndarray  # (T_q, D) float32, L2-normalised
    truncated: bool  # the media (or the part of an indexed video) holds more frames than the query used
    decode_ms: float
    encode_ms: float


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def global_tokens(model: CAVMAESync, modality: Modality, batch: torch.Tensor) -> np.ndarray:
    """(N, ...) segments or frames -> normalised global tokens (N, D) float32 (`model.inference`)."""
    return frame_tokens(model, modality, batch).global_tokens.cpu().numpy()


def audio_query(model: CAVMAESync, path: Path, prep: PreprocessConfig) -> QueryTokens:
    """Any file with an audio track -> (T_q, D) tokens, one per 0.64 s (the first max_query_s)."""
    start = time.perf_counter()
    segments, truncated = read_query_audio(path, model.config, prep)  # (n, L, mel)
    decoded = time.perf_counter()
    tokens = global_tokens(model, "audio", segments)
    return QueryTokens(tokens, truncated, ms(decoded - start), ms(time.perf_counter() - decoded))


def video_query(model: CAVMAESync, path: Path, prep: PreprocessConfig) -> QueryTokens:
    """A video -> (T_q, D) visual tokens of its frames (the first max_query_s)."""
    start = time.perf_counter()
    frames, truncated = read_query_frames(path, model.config, prep)
    decoded = time.perf_counter()
    tokens = global_tokens(model, "visual", frames)
    return QueryTokens(tokens, truncated, ms(decoded - start), ms(time.perf_counter() - decoded))


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
    found: PictureMap  # the map over the whole picture (model.localization), its crops and their grids
    peak_xy: tuple[int, int]  # pixel (x, y) of the maximum of the map, in the resized picture


def localize(
    model: CAVMAESync, picture: torch.Tensor, audio_token: np.ndarray, head: LocalizationHead | None = None
) -> Localization:
    """picture (3, h, w) preprocessed (short side = image size), audio_token (D,) normalised -> the map
    over the whole picture (the head's with a head, else the paper's) and its peak."""
    device = model_device(model)
    audio = torch.from_numpy(np.ascontiguousarray(audio_token, dtype=np.float32)).to(device)
    with autocast(device):
        found = picture_map(model, picture.to(device), audio, head)
    y, x = divmod(int(torch.argmax(found.values)), found.values.shape[1])
    return Localization(found, (x, y))


def _jet(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB in [0, 1], the classic jet colour map (blue low, red high)."""
    v = 4.0 * values[..., None]
    return np.clip(1.5 - np.abs(v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)


def heatmap_png(display: np.ndarray, values: torch.Tensor, alpha: float = 0.5) -> bytes:
    """The picture at display size (H, W, 3) uint8 with the map (h, w) resized to it (bilinear) and overlaid
    in jet colours (min-max scaled), and a colour legend (the map's min and max cosine), as PNG bytes."""
    height, width = display.shape[:2]
    shown = F.interpolate(values[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)
    low, high = float(values.min()), float(values.max())
    scaled = ((shown[0, 0] - low) / (high - low) if high > low else torch.zeros_like(shown[0, 0])).clamp(0, 1)
    blended = (1 - alpha) * display / 255.0 + alpha * _jet(scaled.numpy())
    image = Image.fromarray((blended * 255).round().astype(np.uint8))
    _draw_legend(image, low, high)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _draw_legend(image: Image.Image, low: float, high: float) -> None:
    """A jet colour bar from `low` to `high` along the bottom of the image, with its two values."""
    width, height = image.size
    font = ImageFont.load_default(size=max(8, height // 28))
    bar_h, margin = max(4, height // 40), max(2, height // 80)
    labels = (f"{low:.2f}", f"cos {high:.2f}")
    text_w = [int(font.getlength(t)) for t in labels]
    bar_w = max(8, width - sum(text_w) - 6 * margin)
    top = height - bar_h - 2 * margin
    draw = ImageDraw.Draw(image)
    text_h = int(font.size) if isinstance(font, ImageFont.FreeTypeFont) else bar_h
    draw.rectangle((0, min(top, height - text_h - 2 * margin) - margin, width, height), fill=(0, 0, 0))
    gradient = (_jet(np.linspace(0, 1, bar_w))[None] * 255).astype(np.uint8).repeat(bar_h, axis=0)
    image.paste(Image.fromarray(gradient), (text_w[0] + 3 * margin, top + margin))
    baseline = height - margin
    draw.text((margin, baseline), labels[0], fill=(255, 255, 255), font=font, anchor="ls")
    draw.text((width - margin, baseline), labels[1], fill=(255, 255, 255), font=font, anchor="rs")
