"""Training data: sources of clips (raw media manifests, the official CAV-MAE manifest) and the
dataset of (audio segment, frame) pairs that pretraining samples from (paper 2.3: one random frame of
a clip and the audio segment centred on it).

Unreadable items are counted and skipped (the collate function drops them and reports how many),
never replaced by zeros. Every random choice is seeded by (seed, epoch, item), so a run resumes
exactly and a batch is the same however it is split across ranks and workers.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.io import decode_image
from torchvision.transforms.v2 import functional as TF

from model import MediaError, ModelConfig, PreprocessConfig, load_clips
from model.features import clip_segments, normalize_frames
from model.media import decode_audio
from model.probe import probe

log = logging.getLogger(__name__)


class ClipSource(Protocol):
    """Anything that yields clips by index: frames (T, 3, H, W) and segments (T, L, mel)."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def labels(self, index: int) -> list[str]: ...


def _resolve(base: Path, path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else base / candidate


@dataclass
class MediaManifest:
    """Raw media files listed in a CSV (`path[,labels]`) or JSONL (`{"path": ..., "labels": [...]}`).

    A folder made by `cavsync synth` is read through its `metadata.jsonl`. Each file is one item: its
    first clip (10.24 s), decoded through `model.load_clips`.
    """

    rows: list[dict[str, Any]]
    base: Path
    config: ModelConfig
    prep: PreprocessConfig

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], config: ModelConfig, prep: PreprocessConfig | None = None
    ) -> MediaManifest:
        path = Path(path)
        if path.is_dir():
            path = path / "metadata.jsonl"
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            with path.open(newline="") as handle:
                rows = [
                    {"path": r["path"], "labels": [x for x in (r.get("labels") or "").split(";") if x]}
                    for r in csv.DictReader(handle)
                ]
        if not rows:
            raise ValueError(f"{path}: the manifest lists no media")
        return cls(rows, path.parent, config, prep or PreprocessConfig())

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        clip = load_clips(_resolve(self.base, self.rows[index]["path"]), self.config, self.prep)[0]
        if clip.frames is None or clip.audio_segments is None:
            raise MediaError(f"{self.rows[index]['path']}: needs both audio and video, has {clip.modalities}")
        return clip.frames, clip.audio_segments

    def labels(self, index: int) -> list[str]:
        return list(self.rows[index].get("labels", []))

    def key(self, index: int) -> str:
        return str(self.rows[index].get("clip_id") or self.rows[index]["path"])


@dataclass
class OfficialManifest:
    """The official CAV-MAE / CAV-MAE Sync data JSON: {"data": [{video_id, wav, video_path, labels}]},
    frames at `{video_path}/frame_{t}/{video_id}.jpg`, labels as comma-separated mids of a label CSV
    (`mid,index,display_name`)."""

    rows: list[dict[str, Any]]
    base: Path
    config: ModelConfig
    prep: PreprocessConfig
    label_names: dict[str, str]

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        config: ModelConfig,
        label_csv: str | os.PathLike[str] | None = None,
        prep: PreprocessConfig | None = None,
    ) -> OfficialManifest:
        path = Path(path)
        rows = json.loads(path.read_text())["data"]
        names: dict[str, str] = {}
        if label_csv:
            with open(label_csv, newline="") as handle:
                names = {r["mid"]: r["display_name"] for r in csv.DictReader(handle)}
        return cls(rows, path.parent, config, prep or PreprocessConfig(), names)

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.rows[index]
        frames = torch.stack([self._frame(row, t) for t in range(self.config.frames_per_clip)])
        return frames, clip_segments(self._wave(row), self.config, self.prep)

    def _frame(self, row: dict[str, Any], t: int) -> torch.Tensor:
        path = _resolve(self.base, row["video_path"]) / f"frame_{t}" / f"{row['video_id']}.jpg"
        try:
            image = decode_image(str(path), mode="RGB")  # (3, H, W) uint8
        except (RuntimeError, OSError) as exc:
            raise MediaError(f"{path}: unreadable frame: {exc}") from exc
        size = self.config.image_size
        image = TF.center_crop(TF.resize(image, size, interpolation=TF.InterpolationMode.BICUBIC), [size, size])
        return normalize_frames(image.permute(1, 2, 0).numpy()[None], self.prep)[0]

    def _wave(self, row: dict[str, Any]) -> np.ndarray:
        path = _resolve(self.base, row["wav"])
        try:
            with wave.open(str(path), "rb") as handle:
                if handle.getsampwidth() == 2 and handle.getframerate() == self.prep.sample_rate:
                    data = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
                    return data.reshape(-1, handle.getnchannels())[:, 0].astype(np.float32) / 32768.0
        except (wave.Error, EOFError, OSError):
            pass  # not a plain 16-bit PCM wav at the right rate: let ffmpeg read it
        return decode_audio(probe(path, self.prep.timeout_s, self.prep.limits), self.prep.sample_rate)

    def labels(self, index: int) -> list[str]:
        mids = [m for m in str(self.rows[index].get("labels", "")).split(",") if m]
        return [self.label_names.get(m, m) for m in mids]

    def key(self, index: int) -> str:
        return str(self.rows[index]["video_id"])


class PairDataset(Dataset):
    """One (audio segment, frame) pair per clip per epoch; item = clip index.

    Returns None for an unreadable clip (dropped by `collate_pairs`). `cache_dir`, when given, keeps
    each decoded clip as fp16 tensors, written atomically, so later epochs skip decoding.
    """

    def __init__(
        self, source: ClipSource, seed: int, config: ModelConfig, cache_dir: str | os.PathLike[str] | None = None
    ):
        self.source, self.seed, self.config = source, seed, config
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def clip(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self.cache_dir / f"{index:08d}.pt" if self.cache_dir else None
        if cached is not None and cached.exists():
            data = torch.load(cached, weights_only=True)
            return data["frames"].float(), data["segments"].float()
        frames, segments = self.source.load(index)
        if cached is None:
            return frames, segments
        frames, segments = frames.half(), segments.half()
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"frames": frames, "segments": segments}, tmp)
        os.replace(tmp, cached)
        return frames.float(), segments.float()  # rounded as the cache is: the same values either way

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            frames, segments = self.clip(index)
        except MediaError as exc:
            log.warning("skipping item %d: %s", index, exc)
            return None
        rng = np.random.default_rng([self.seed, self.epoch, index])
        t = int(rng.integers(frames.shape[0]))
        cfg = self.config
        return {
            "audio": segments[t],
            "frame": frames[t],
            "index": index,
            "mask_noise_audio": torch.from_numpy(rng.random(cfg.num_audio_patches, dtype=np.float32)),
            "mask_noise_visual": torch.from_numpy(rng.random(cfg.num_visual_patches, dtype=np.float32)),
        }


def collate_pairs(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack the readable items; `skipped` counts the unreadable ones."""
    good = [item for item in items if item is not None]
    batch: dict[str, Any] = {"skipped": len(items) - len(good)}
    if good:
        for key in ("audio", "frame", "mask_noise_audio", "mask_noise_visual"):
            batch[key] = torch.stack([item[key] for item in good])
        batch["index"] = torch.tensor([item["index"] for item in good])
    return batch


def epoch_batches(
    num_items: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1
) -> list[list[int]]:
    """This rank's batches of an epoch: a seeded permutation, split across ranks, last partial dropped.

    Global batch k is the concatenation of batch k of every rank, in rank order.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_items, generator=generator).tolist()
    per_step = batch_size * world
    steps = len(order) // per_step
    return [order[k * per_step + rank * batch_size : k * per_step + (rank + 1) * batch_size] for k in range(steps)]
