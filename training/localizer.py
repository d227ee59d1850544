"""Training a localization head on a frozen backbone (DenseAV's recipe on top of CAV-MAE Sync).

    cavsync train-localizer --checkpoint CKPT --data DIR|MANIFEST --out-dir RUN [--into CKPT_WITH_HEAD]

The backbone never changes: every clip's frames go through it once, and its early visual patch tokens
(block `layer`) and audio global tokens are cached (`RUN/features-*.pt`, fp16). The head then learns,
batch by batch, to score each frame's patches against the audio of every frame in the batch: the
frame score is the best patch (`max`) or a soft max over patches, and a symmetric InfoNCE makes a
frame's own sound score highest. Every batch is a function of (seed, step), so a run restarted with
the same out-dir resumes from `RUN/last.pt` and ends with the same head as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from model import CAVMAESync, MediaError, load_model
from model.checkpoint import read_metadata, save_checkpoint, save_head
from model.localization import Aggregation, LocalizationHead, LocalizationHeadConfig, backbone_fingerprint, dense_scores
from training.data import MediaManifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalizerConfig:
    """One head-training run. The defaults are the measured choice for the demo (checkpoints/README.md)."""

    checkpoint: str  # the frozen backbone (.safetensors or official .pth)
    data: str  # a media manifest (CSV/JSONL) or a `cavsync synth` folder
    out_dir: str
    into: str | None = None  # also write the checkpoint with the head here (may be `checkpoint` itself)
    layer: int = 2  # visual block whose patch tokens feed the head
    hidden_dim: int = 256
    aggregation: Aggregation = "max"
    pool_temperature: float = 0.1  # for aggregation=softmax
    temperature: float = 0.05  # InfoNCE
    steps: int = 300
    batch_size: int = 64  # clips per batch (one frame each)
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    max_clips: int | None = None  # use only the first clips of the data
    frame_stride: int = 2  # cache every k-th of a clip's T frames (neighbours are near-duplicates)
    checkpoint_every: int = 100
    workers: int = 2  # decoding processes for the feature cache
    encode_batch: int = 64  # frames per backbone forward while caching

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.temperature <= 0 or self.pool_temperature <= 0:
            raise ValueError("steps >= 1, batch_size >= 2 and temperatures > 0 are required")
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if self.aggregation not in get_args(Aggregation):
            raise ValueError(f"aggregation must be one of {get_args(Aggregation)}, got {self.aggregation!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def head_config_for(cfg: LocalizerConfig, model: CAVMAESync) -> LocalizationHeadConfig:
    head = LocalizationHeadConfig(embed_dim=model.config.embed_dim, layer=cfg.layer, hidden_dim=cfg.hidden_dim)
    head.check_backbone(model.config)
    return head


# ------------------------------------------------------------------------------------ frozen features
class FrozenFeatures(NamedTuple):
    """What the frozen backbone gives the head, per clip and frame."""

    visual: torch.Tensor  # (N, T, P, D) fp16: patch tokens after visual block `layer`
    audio: torch.Tensor  # (N, T, D) fp32, L2-normalised audio global tokens


class _Clips(Dataset):
    def __init__(self, source: MediaManifest, count: int) -> None:
        self.source, self.count = source, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        try:
            return self.source.load(index)
        except MediaError as exc:
            log.warning("skipping %s: %s", self.source.key(index), exc)
            return None


def _first(items: list) -> object:
    return items[0]


@torch.no_grad()
def encode_features(
    model: CAVMAESync,
    source: MediaManifest,
    layers: tuple[int, ...],
    *,
    max_clips: int | None = None,
    frame_stride: int = 1,
    workers: int = 2,
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Decode and encode every clip once: {layer: (N, T', P, D) fp16} and audio (N, T', D) normalised, for
    every `frame_stride`-th frame (T' = ceil(T / frame_stride)). Unreadable clips are skipped (logged)."""
    count = min(len(source), max_clips or len(source))
    loader = DataLoader(_Clips(source, count), batch_size=1, num_workers=workers, collate_fn=_first)
    visual: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    audio: list[torch.Tensor] = []
    for item in tqdm(loader, total=count, desc="frozen features", unit="clip"):
        if item is None:
            continue
        frames, segments = item[0][::frame_stride], item[1][::frame_stride]
        audio.append(F.normalize(model.encode_audio(segments).global_tokens.float(), dim=-1))
        for layer in layers:
            visual[layer].append(model.visual_layer_tokens(frames, layer).half())
    if not audio:
        raise ValueError(f"{source.base}: no readable clip to train on")
    return {layer: torch.stack(v) for layer, v in visual.items()}, torch.stack(audio)


def cached_features(model: CAVMAESync, cfg: LocalizerConfig, fingerprint: str) -> FrozenFeatures:
    """The run's frozen features, computed once and kept in out_dir (named by backbone and layer)."""
    name = f"features-{fingerprint[:16]}-L{cfg.layer}-n{cfg.max_clips or 'all'}-s{cfg.frame_stride}.pt"
    path = Path(cfg.out_dir) / name
    if path.exists():
        data = torch.load(path, weights_only=True)
        return FrozenFeatures(data["visual"], data["audio"])
    source = MediaManifest.open(cfg.data, model.config)
    visual, audio = encode_features(
        model, source, (cfg.layer,), max_clips=cfg.max_clips, frame_stride=cfg.frame_stride, workers=cfg.workers
    )
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"visual": visual[cfg.layer], "audio": audio}, tmp)
    os.replace(tmp, path)
    return FrozenFeatures(visual[cfg.layer], audio)


# ------------------------------------------------------------------------------------ objective
def batch_items(
    num_clips: int, frames: int, batch_size: int, seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step `step`'s batch: distinct clips and one random frame of each, a function of (seed, step)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    clips = torch.randperm(num_clips, generator=generator)[: min(batch_size, num_clips)]
    return clips, torch.randint(frames, (len(clips),), generator=generator)


def localizer_loss(
    head: LocalizationHead, visual: torch.Tensor, audio: torch.Tensor, cfg: LocalizerConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """visual (B, P, D), audio (B, D), pair i matches -> symmetric InfoNCE over the dense scores, accuracy."""
    scores = dense_scores(audio, head(visual.float()), cfg.aggregation, cfg.pool_temperature) / cfg.temperature
    target = torch.arange(len(scores))
    loss = 0.5 * (F.cross_entropy(scores, target) + F.cross_entropy(scores.T, target))
    return loss, (scores.argmax(dim=1) == target).float().mean()


def fit_head(
    head: LocalizationHead,
    features: FrozenFeatures,
    cfg: LocalizerConfig,
    optimizer: torch.optim.Optimizer,
    *,
    start: int = 0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Steps start .. cfg.steps - 1 on the cached features; `on_step(step, metrics)` after each one."""
    metrics: dict[str, float] = {}
    num_clips, frames = features.audio.shape[:2]
    head.train()
    for step in range(start, cfg.steps):
        clips, times = batch_items(num_clips, frames, cfg.batch_size, cfg.seed, step)
        loss, accuracy = localizer_loss(head, features.visual[clips, times], features.audio[clips, times], cfg)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: non-finite loss; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        metrics = {"loss": loss.item(), "accuracy": accuracy.item()}
        if on_step is not None:
            on_step(step + 1, metrics)
    head.eval()
    return metrics


# ------------------------------------------------------------------------------------ the run
def _identity(cfg: LocalizerConfig, fingerprint: str) -> str:
    """What a resumed run must share with the interrupted one: the backbone and the training choices."""
    kept = {
        k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("into", "workers", "checkpoint_every", "steps")
    }
    return json.dumps(kept | {"backbone": fingerprint}, sort_keys=True)


def _save_state(path: Path, head: LocalizationHead, optimizer: torch.optim.Optimizer, step: int, run: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"head": head.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "run": run}, tmp)
    os.replace(tmp, path)


def _resume(path: Path, head: LocalizationHead, optimizer: torch.optim.Optimizer, run: str) -> int:
    """The step `path` holds (its head and optimizer loaded), or 0 without one; ValueError for another run."""
    if not path.exists():
        return 0
    state = torch.load(path, weights_only=True)
    if state.get("run") != run:
        raise ValueError(f"{path} holds a run of another backbone or other settings: use a fresh --out-dir")
    head.load_state_dict(state["head"])
    optimizer.load_state_dict(state["optimizer"])
    log.info("resumed from %s at step %d", path, state["step"])
    return int(state["step"])


def train_localizer(cfg: LocalizerConfig, progress: bool = True) -> Path:
    """Train (or resume) a head on the frozen backbone of cfg.checkpoint. Writes RUN/head.safetensors (an
    adapter naming the backbone) and, with cfg.into, the checkpoint with the head; returns the head file."""
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(cfg.checkpoint)
    fingerprint = backbone_fingerprint(model)
    features = cached_features(model, cfg, fingerprint)
    torch.manual_seed(cfg.seed)  # here: computing the features (a DataLoader) draws from the global generator
    head = LocalizationHead(head_config_for(cfg, model))
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state_path, run = out_dir / "last.pt", _identity(cfg, fingerprint)
    start = _resume(state_path, head, optimizer, run)
    (out_dir / "config.json").write_text(cfg.to_json())
    bar = tqdm(total=cfg.steps, initial=start, desc="localization head", unit="step", disable=not progress)

    def on_step(step: int, metrics: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.2f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save_state(state_path, head, optimizer, step, run)

    try:
        fit_head(head, features, cfg, optimizer, start=start, on_step=on_step)
    finally:
        bar.close()
    return write_outputs(cfg, model, head)


def write_outputs(cfg: LocalizerConfig, model: CAVMAESync, head: LocalizationHead) -> Path:
    """RUN/head.safetensors, and the checkpoint with the head at cfg.into (its metadata kept)."""
    trained = {"localizer_config": json.dumps(dataclasses.asdict(cfg), sort_keys=True)}
    path = save_head(head, model, Path(cfg.out_dir) / "head.safetensors", trained)
    if cfg.into:
        save_checkpoint(model, cfg.into, read_metadata(cfg.checkpoint) | trained, head=head)
    return path
