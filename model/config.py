"""Frozen configuration of the CAV-MAE Sync network and its pretraining objective.

`ModelConfig` holds every size of the network (it travels inside checkpoints); `ObjectiveConfig`
holds the pretraining knobs (mask ratios, loss weights, temperature), which are not part of a
checkpoint's identity. Presets: `base` is exactly the released VGGSound checkpoint, `tiny` is a
small model for tests and the demo.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the network. Audio inputs are (L=audio_frames, mel_bins) fbank segments."""

    embed_dim: int = 768
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    modality_depth: int = 11
    joint_depth: int = 1
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    num_registers: int = 8
    global_token: bool = True
    frames_per_clip: int = 16
    audio_frames: int = 416
    mel_bins: int = 128
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        problems = []
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.decoder_embed_dim % self.decoder_num_heads:
            problems.append(
                f"decoder_embed_dim {self.decoder_embed_dim} is not divisible by "
                f"decoder_num_heads {self.decoder_num_heads}"
            )
        for name in ("audio_frames", "mel_bins", "image_size"):
            if getattr(self, name) % self.patch_size:
                problems.append(f"{name} {getattr(self, name)} is not a multiple of patch_size {self.patch_size}")
        for name in ("modality_depth", "joint_depth", "frames_per_clip", "embed_dim", "decoder_embed_dim"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_registers < 0 or self.decoder_depth < 0:
            problems.append("num_registers and decoder_depth must be >= 0")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def audio_grid(self) -> tuple[int, int]:
        """(mel rows, time columns) of the audio patch grid; token index = row * columns + column."""
        return self.mel_bins // self.patch_size, self.audio_frames // self.patch_size

    @property
    def visual_grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    @property
    def num_audio_patches(self) -> int:
        rows, cols = self.audio_grid
        return rows * cols

    @property
    def num_visual_patches(self) -> int:
        rows, cols = self.visual_grid
        return rows * cols

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {unknown}")
        return cls(**values)


@dataclass(frozen=True)
class ObjectiveConfig:
    """Pretraining objective. Defaults are the official CAV-MAE Sync code's defaults.

    total = lambda_r * (mse_audio + mse_visual) + lambda_c * infonce(global_audio, global_visual)
    """

    mask_ratio_audio: float = 0.75
    mask_ratio_visual: float = 0.75
    norm_pix_loss: bool = False
    temperature: float = 0.05
    symmetric_contrastive: bool = False
    lambda_c: float = 0.01
    lambda_r: float = 1.0

    def __post_init__(self) -> None:
        for name in ("mask_ratio_audio", "mask_ratio_visual"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


PRESETS: dict[str, ModelConfig] = {
    # Exactly the released VGGSound retrieval checkpoint (cav_mae_sync.pth).
    "base": ModelConfig(),
    # Small and fast: tests and the CPU-trained demo checkpoint.
    "tiny": ModelConfig(
        embed_dim=128,
        num_heads=4,
        modality_depth=4,
        joint_depth=1,
        decoder_embed_dim=64,
        decoder_depth=2,
        decoder_num_heads=4,
        num_registers=2,
        mel_bins=64,
        image_size=112,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset, optionally with some fields changed."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
