"""Clip classification on top of the encoder: per frame the audio and visual global tokens are
concatenated, a learnable CLS token and a 2-layer transformer run over the T frames, a linear head
reads the CLS. Linear-probe (frozen encoder) or fine-tune; BCE + mAP (multi-label) or CE + accuracy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model import CAVMAESync
from model.layers import make_blocks, run_blocks
from training.evaluate import average_precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierConfig:
    num_classes: int
    multi_label: bool = True
    depth: int = 2
    num_heads: int = 4
    freeze_encoder: bool = True  # linear probe; False fine-tunes the encoder too
    lr: float = 1e-3
    encoder_lr: float = 1e-5
    epochs: int = 10
    batch_size: int = 16


class ClipClassifier(nn.Module):
    def __init__(self, encoder: CAVMAESync, config: ClassifierConfig) -> None:
        super().__init__()
        self.encoder, self.config = encoder, config
        dim, frames = 2 * encoder.config.embed_dim, encoder.config.frames_per_clip
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, frames + 1, dim))
        self.blocks = make_blocks(config.depth, dim, config.num_heads, 4.0, True, encoder.config.norm_eps)
        self.norm = nn.LayerNorm(dim, eps=encoder.config.norm_eps)
        self.head = nn.Linear(dim, config.num_classes)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        if config.freeze_encoder:
            encoder.requires_grad_(False)

    def frame_tokens(self, frames: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """frames (B, T, 3, H, W), segments (B, T, L, mel) -> concatenated global tokens (B, T, 2D)."""
        batch, count = frames.shape[:2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
            audio = self.encoder.encode_audio(segments.flatten(0, 1)).global_tokens
            visual = self.encoder.encode_visual(frames.flatten(0, 1)).global_tokens
        return torch.cat([audio, visual], dim=-1).view(batch, count, -1)

    def forward(self, frames: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """-> logits (B, num_classes)."""
        x = self.frame_tokens(frames, segments)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed[:, : x.shape[1] + 1]
        return self.head(self.norm(run_blocks(self.blocks, x))[:, 0])


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """BCE over multi-hot targets (B, C), or CE over class indices (B,)."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets.float())
    return F.cross_entropy(logits, targets)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> dict[str, float]:
    if multi_label:
        aps = [average_precision(logits[:, c], targets[:, c].bool()) for c in range(logits.shape[1])]
        present = [ap for ap in aps if ap == ap]  # classes with a positive
        return {"mAP": sum(present) / max(1, len(present))}
    return {"accuracy": (logits.argmax(dim=1) == targets).float().mean().item()}


def fit(
    classifier: ClipClassifier,
    frames: torch.Tensor,
    segments: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Train on in-memory clips: frames (N, T, 3, H, W), segments (N, T, L, mel); returns epoch losses."""
    cfg = classifier.config
    groups = [{"params": [p for n, p in classifier.named_parameters() if not n.startswith("encoder.")], "lr": cfg.lr}]
    if not cfg.freeze_encoder:
        groups.append({"params": list(classifier.encoder.parameters()), "lr": cfg.encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-4)
    classifier.train()
    losses = []
    for _ in range(cfg.epochs):
        order, total = torch.randperm(len(frames), generator=generator), 0.0
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            loss = classification_loss(classifier(frames[rows], segments[rows]), targets[rows], cfg.multi_label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        losses.append(total / len(order))
    classifier.eval()
    return losses


def evaluate_classification(
    encoder: CAVMAESync, source, config: ClassifierConfig, holdout: float = 0.2, seed: int = 0
) -> dict[str, float]:
    """Train the head on the first (1 - holdout) of a labelled corpus, score it on the rest.

    Labels come from the source (`labels(index)`); multi-label targets are multi-hot over every label
    seen, single-label targets take each clip's first label.
    """
    clips = [source.load(i) for i in range(len(source))]
    names = sorted({label for i in range(len(source)) for label in source.labels(i)})
    if not names:
        raise ValueError("the corpus has no labels")
    lookup = {name: k for k, name in enumerate(names)}
    if config.multi_label:
        targets = torch.zeros(len(clips), len(names))
        for i in range(len(clips)):
            targets[i, [lookup[n] for n in source.labels(i)]] = 1.0
    else:
        targets = torch.tensor([lookup[source.labels(i)[0]] if source.labels(i) else 0 for i in range(len(clips))])
    frames, segments = torch.stack([c[0] for c in clips]), torch.stack([c[1] for c in clips])
    split = int(len(clips) * (1 - holdout))
    head = ClipClassifier(encoder, config if config.num_classes == len(names) else _with_classes(config, len(names)))
    losses = fit(head, frames[:split], segments[:split], targets[:split], torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = head(frames[split:], segments[split:])
    metrics = classification_metrics(logits, targets[split:], config.multi_label)
    return metrics | {
        "train_clips": split,
        "test_clips": len(clips) - split,
        "classes": len(names),
        "final_train_loss": losses[-1],
    }


def _with_classes(config: ClassifierConfig, count: int) -> ClassifierConfig:
    from dataclasses import replace

    return replace(config, num_classes=count)
