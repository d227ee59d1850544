"""Sound-prompted localization: where in a picture a sound comes from. The ONE place the map is computed.

Two methods, both a cosine of the frame's audio global token (L2-normalised, (D,)) with one embedding
per visual patch, on the G x G patch grid of the model's square input:

- `paper`: the final visual patch tokens (CAV-MAE Sync's map; every checkpoint has it);
- `head`: a `LocalizationHead` (a small per-patch MLP) over the patch tokens of an early visual block,
  trained with the backbone frozen against the frozen audio global token (`training/localizer.py`).

A picture that is not square is covered by square crops of the model's size (`covering_crops`); the
crops' maps are upsampled and averaged where they overlap, so the map covers the whole picture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.network import CAVMAESync

LocalizationMethod = Literal["paper", "head"]
Aggregation = Literal["max", "softmax"]  # how a frame's patch scores become one frame score in training
VALUE_RANGE = (-1.0, 1.0)  # both maps are cosines


@dataclass(frozen=True)
class LocalizationHeadConfig:
    """Sizes of a localization head: visual block `layer`'s patch tokens (embed_dim) -> MLP -> embed_dim."""

    embed_dim: int
    layer: int = 1  # 0: the patch embedding; k: the output of visual block k
    hidden_dim: int = 256

    def __post_init__(self) -> None:
        if self.embed_dim < 1 or self.hidden_dim < 1 or self.layer < 0:
            raise ValueError(f"invalid LocalizationHeadConfig: {self}")

    def check_backbone(self, config: ModelConfig) -> None:
        """ValueError unless the head fits a backbone of this config."""
        if self.embed_dim != config.embed_dim or self.layer > config.modality_depth:
            raise ValueError(
                f"a head for {self.embed_dim}-d tokens of visual block {self.layer} does not fit a backbone of "
                f"{config.embed_dim}-d tokens and {config.modality_depth} visual blocks"
            )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LocalizationHeadConfig:
        values: dict[str, Any] = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(values, dict) or set(values) - known:
            raise ValueError(f"unknown LocalizationHeadConfig fields: {sorted(set(values) - known)}")
        return cls(**values)


class LocalizationHead(nn.Module):
    """Per-patch MLP: (N, P, embed_dim) early visual patch tokens -> (N, P, embed_dim) localization embeddings."""

    def __init__(self, config: LocalizationHeadConfig) -> None:
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(config.embed_dim)
        self.fc1 = nn.Linear(config.embed_dim, config.hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(config.hidden_dim, config.embed_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.act(self.fc1(self.norm(features))))
        return out


# --------------------------------------------------------------------------------------------- maps
def patch_embeddings(model: CAVMAESync, frames: torch.Tensor, head: LocalizationHead | None = None) -> torch.Tensor:
    """frames (N, 3, S, S) normalised -> what the audio token is scored against per patch, (N, P, D):
    the head's embeddings of its visual block's tokens, or (no head: the paper's) the final patch tokens."""
    if head is None:
        return model.encode_visual(frames).patch_tokens
    embedded: torch.Tensor = head(model.visual_layer_tokens(frames, head.config.layer))
    return embedded


def cosine_grid(audio: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """audio (N, D), patches (N, P, D) -> (N, G, G): the cosine of audio token n with each patch of frame n."""
    side = math.isqrt(patches.shape[1])
    scores = torch.einsum("nd,npd->np", F.normalize(audio.float(), dim=-1), F.normalize(patches.float(), dim=-1))
    return scores.reshape(-1, side, side)  # (N, G, G), row-major like the patch tokens


@torch.no_grad()
def localization_grid(
    model: CAVMAESync, frames: torch.Tensor, audio: torch.Tensor, head: LocalizationHead | None = None
) -> torch.Tensor:
    """frames (N, 3, S, S), audio tokens (N, D) -> the map on the patch grid, (N, G, G), values in [-1, 1].

    With `head` the head's map, without it the paper's."""
    return cosine_grid(audio.to(frames.device), patch_embeddings(model, frames, head))


def upsample(grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, G, G) -> (N, height, width), bilinear (align_corners=False)."""
    return F.interpolate(grid[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def dense_scores(
    audio: torch.Tensor, patches: torch.Tensor, aggregation: Aggregation, pool_temperature: float = 0.1
) -> torch.Tensor:
    """Audio-conditioned frame scores for training: audio (A, D), patches (B, P, D) -> (A, B).

    Score (a, b) = the best cosine of audio a over frame b's patches (`max`), or their softmax-weighted
    mean at `pool_temperature` (`softmax`, a smooth max that gives every patch some gradient)."""
    cos = torch.einsum("ad,bpd->abp", F.normalize(audio, dim=-1), F.normalize(patches, dim=-1))  # (A, B, P)
    if aggregation == "max":
        return cos.max(dim=-1).values
    if aggregation == "softmax":
        return (torch.softmax(cos / pool_temperature, dim=-1) * cos).sum(dim=-1)
    raise ValueError(f"unknown aggregation {aggregation!r} (max | softmax)")


# --------------------------------------------------------------------------------------------- pictures
class CropBox(NamedTuple):
    """A square crop of the resized picture, in its pixels: left, top, side."""

    x: int
    y: int
    size: int


@dataclass(frozen=True)
class PictureMap:
    """The map over a whole picture (short side = the model's image size)."""

    values: torch.Tensor  # (H, W) the crops' upsampled maps, averaged where they overlap
    crops: list[CropBox]  # the model's square inputs that cover the picture
    grids: torch.Tensor  # (K, G, G) each crop's patch-grid map
    method: LocalizationMethod


def covering_crops(height: int, width: int, size: int) -> list[CropBox]:
    """Square `size` crops along the long side that cover a (height, width) picture whose short side is
    `size`: evenly spaced, consecutive ones overlapping by at least half a crop."""
    if min(height, width) != size:
        raise ValueError(f"the picture's short side must be {size}, got {height} x {width}")
    extent = max(height, width)
    count = 1 if extent == size else math.ceil((extent - size) / (size / 2)) + 1
    offsets = [round(k * (extent - size) / max(1, count - 1)) for k in range(count)]
    return [CropBox(o, 0, size) if width > height else CropBox(0, o, size) for o in offsets]


@torch.no_grad()
def picture_map(
    model: CAVMAESync, picture: torch.Tensor, audio: torch.Tensor, head: LocalizationHead | None = None
) -> PictureMap:
    """picture (3, H, W) normalised with min(H, W) = the model's image size, audio (D,) -> its PictureMap."""
    height, width = picture.shape[-2:]
    size = model.config.image_size
    crops = covering_crops(height, width, size)
    batch = torch.stack([picture[:, c.y : c.y + size, c.x : c.x + size] for c in crops])  # (K, 3, S, S)
    grids = localization_grid(model, batch, audio.expand(len(crops), -1), head).cpu()  # (K, G, G)
    tiles = upsample(grids, size, size)  # (K, S, S)
    total, count = torch.zeros(height, width), torch.zeros(height, width)
    for crop, tile in zip(crops, tiles, strict=True):
        total[crop.y : crop.y + size, crop.x : crop.x + size] += tile
        count[crop.y : crop.y + size, crop.x : crop.x + size] += 1
    return PictureMap(total / count, crops, grids, "head" if head is not None else "paper")


# --------------------------------------------------------------------------------------------- identity
def backbone_fingerprint(model: CAVMAESync) -> str:
    """sha256 of the backbone's tensors (names, shapes and float32 bytes, sorted by name): a head names the
    backbone it was trained on with it, and is refused for any other."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(values.shape)}\n".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()
