"""The one inference API: normalised per-frame tokens for either modality, with the device and the autocast
chosen here (bf16 on CUDA, float32 elsewhere). Indexing, evaluation and the service all encode through it.

    tokens = clip_tokens(model, "audio", segments)  # (B, T, L, mel) -> (B, T, D) normalised float32
    out = frame_tokens(model, "visual", frames)  # (N, 3, H, W) -> global (N, D) normalised, patches (N, P, D)
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import NamedTuple

import torch

from model.network import CAVMAESync, Modality
from model.similarity import normalize


def default_device(name: str | None = None) -> torch.device:
    """The device to run on: `name` when given (anything but "auto"), else CUDA when present, else the CPU."""
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def autocast(device: torch.device) -> AbstractContextManager[object]:
    """bf16 autocast on CUDA; a no-op elsewhere (CPU inference stays float32, as the parity tests check)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


class FrameTokens(NamedTuple):
    """Per-frame outputs of one modality's encoder."""

    global_tokens: torch.Tensor  # (N, D) float32, L2-normalised: what retrieval compares
    patch_tokens: torch.Tensor  # (N, P, D) float32, not normalised: localization normalises them


@torch.no_grad()
def frame_tokens(model: CAVMAESync, modality: Modality, inputs: torch.Tensor) -> FrameTokens:
    """inputs: (N, L, mel) audio segments or (N, 3, H, W) frames -> FrameTokens on the model's device."""
    device = model_device(model)
    encode = model.encode_audio if modality == "audio" else model.encode_visual
    with autocast(device):
        out = encode(inputs.to(device))
    return FrameTokens(normalize(out.global_tokens), out.patch_tokens.float())


@torch.no_grad()
def clip_tokens(model: CAVMAESync, modality: Modality, clips: torch.Tensor) -> torch.Tensor:
    """clips: (B, T, L, mel) audio segments or (B, T, 3, H, W) frames -> (B, T, D) normalised float32, on the
    model's device."""
    device = model_device(model)
    with autocast(device):
        return model.encode_clip_tokens(clips.to(device), modality).float()
