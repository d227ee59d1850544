"""Evaluation: zero-shot retrieval (both directions, every strategy) and sound-prompted localization.

cavsync eval retrieval --checkpoint CKPT --data DIR
cavsync eval localization --checkpoint CKPT --data DIR     (a `cavsync synth` folder: it has masks;
                                                           the paper's map and the checkpoint's head)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from model import CAVMAESync, MediaError
from model.inference import clip_tokens
from model.localization import LocalizationHead, localization_grid, upsample
from model.similarity import STRATEGIES, Strategy, clip_scores
from training.data import MediaManifest
from training.metrics import retrieval_metrics

log = logging.getLogger(__name__)


@dataclass
class CorpusTokens:
    """Per-frame global tokens of a corpus, L2-normalised: audio/visual (N, T, D)."""

    audio: torch.Tensor
    visual: torch.Tensor
    keys: list[str]
    groups: list[str]


class _Clips(Dataset):
    def __init__(self, source: MediaManifest) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        try:
            return (index, *self.source.load(index))
        except MediaError as exc:
            log.warning("skipping %s: %s", self.source.key(index), exc)
            return None


def _keep(items: list) -> list:
    return [item for item in items if item is not None]


def encode_corpus(model: CAVMAESync, source: MediaManifest, batch_size: int = 8, workers: int = 2) -> CorpusTokens:
    """Decode (in worker processes) and encode every clip of a manifest."""
    loader = DataLoader(_Clips(source), batch_size=batch_size, num_workers=workers, collate_fn=_keep)
    audio, visual, indices = [], [], []
    for items in loader:
        if not items:
            continue
        frames, segments = torch.stack([i[1] for i in items]), torch.stack([i[2] for i in items])
        audio.append(clip_tokens(model, "audio", segments).cpu())  # (B, T, D)
        visual.append(clip_tokens(model, "visual", frames).cpu())
        indices += [i[0] for i in items]
    return CorpusTokens(
        torch.cat(audio),
        torch.cat(visual),
        [source.key(i) for i in indices],
        [str(source.rows[i].get("group", source.key(i))) for i in indices],
    )


def retrieval_report(tokens: CorpusTokens, strategies: tuple[Strategy, ...] = STRATEGIES) -> dict[str, Any]:
    """R@1/5/10 and ranks for audio->visual and visual->audio under each strategy, over the whole corpus
    and over the queries that have an order-shuffled hard negative in the corpus."""
    group_sizes: dict[str, int] = {}
    for group in tokens.groups:
        group_sizes[group] = group_sizes.get(group, 0) + 1
    hard = torch.tensor([group_sizes[g] > 1 for g in tokens.groups])
    report: dict[str, Any] = {"clips": len(tokens.keys), "hard_negative_queries": int(hard.sum())}
    for strategy in strategies:
        for name, query, target in (
            ("audio_to_visual", tokens.audio, tokens.visual),
            ("visual_to_audio", tokens.visual, tokens.audio),
        ):
            scores = clip_scores(query, target, strategy)
            entry: dict[str, Any] = dict(retrieval_metrics(scores))
            if hard.any():
                correct = torch.arange(len(scores))[hard]
                entry["hard_negatives"] = retrieval_metrics(scores[hard], correct)
            report[f"{strategy}/{name}"] = entry
    return report


# ------------------------------------------------------------------------------------ localization
def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AP of ranking `scores` against binary `labels` (the area under the step precision-recall curve)."""
    order = scores.argsort(descending=True)
    hits = labels[order].float()
    if hits.sum() == 0:
        return float("nan")
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def localization_maps(
    model: CAVMAESync, frames: torch.Tensor, audio: torch.Tensor, size: int, head: LocalizationHead | None = None
) -> torch.Tensor:
    """Each frame's map for its own audio segment's token (model.localization: the head's, or the paper's
    without one), upsampled to (T, size, size). frames (T, 3, S, S), audio (T, D) global tokens."""
    return upsample(localization_grid(model, frames, audio, head), size, size)


def localization_report(
    maps: list[torch.Tensor],
    masks: list[np.ndarray],
    distractors: list[np.ndarray],
    classes: list[str],
    thresholds: int = 20,
) -> dict[str, Any]:
    """DenseAV-style scores over frames: per-class pixel AP and IoU at the best of `thresholds` levels
    (maps min-max normalised per frame), their class means, and how often the peak is on the object.
    `maps`, `masks`, `distractors`: (size, size) per frame; `classes`: the sounding object's name."""
    norm = [(m - m.min()) / (m.max() - m.min() + 1e-12) for m in maps]
    truth = [torch.from_numpy(m) for m in masks]
    by_class: dict[str, list[int]] = {}
    for i, name in enumerate(classes):
        by_class.setdefault(name, []).append(i)
    levels = torch.linspace(0, 1, thresholds + 2)[1:-1]
    ap, iou_per_level = [], torch.zeros(len(by_class), thresholds)
    for c, indices in enumerate(by_class.values()):
        scores = torch.cat([norm[i].flatten() for i in indices])
        labels = torch.cat([truth[i].flatten() for i in indices])
        ap.append(average_precision(scores, labels))
        predicted = scores[None, :] >= levels[:, None]  # (levels, pixels)
        inter = (predicted & labels[None]).sum(1).float()
        union = (predicted | labels[None]).sum(1).float()
        iou_per_level[c] = inter / union.clamp_min(1)
    best = int(iou_per_level.mean(0).argmax())
    peaks = [bool(truth[i].flatten()[norm[i].flatten().argmax()]) for i in range(len(norm))]
    return {
        "frames": len(maps),
        "classes": len(by_class),
        "mAP": float(np.nanmean(ap)),
        "mIoU": float(iou_per_level[:, best].mean()),
        "best_threshold": float(levels[best]),
        "peak_in_object": float(np.mean(peaks)),
        "peak_on_distractor": float(
            np.mean(
                [bool(torch.from_numpy(d).flatten()[norm[i].flatten().argmax()]) for i, d in enumerate(distractors)]
            )
        ),
    }


def baseline_maps(masks: list[np.ndarray], distractors: list[np.ndarray]) -> dict[str, list[torch.Tensor]]:
    """A centre prior (Gaussian bump) and "pointing at the distractor" (its mask as the map)."""
    size = masks[0].shape[0]
    axis = (torch.arange(size) + 0.5) / size - 0.5
    centre = torch.exp(-(axis[None, :] ** 2 + axis[:, None] ** 2) / (2 * 0.2**2))
    return {"centre_prior": [centre for _ in masks], "distractor": [torch.from_numpy(d).float() for d in distractors]}


def evaluate_localization(
    model: CAVMAESync, source: MediaManifest, only_with_distractor: bool = True, head: LocalizationHead | None = None
) -> dict[str, Any]:
    """Localization on a synth corpus (frames where the distractor is visible, by default): the paper's
    map, the head's when there is one, a centre prior and the distractor. `served` names the method that
    POST /localize uses by default for this model."""
    methods: dict[str, LocalizationHead | None] = {"paper": None} | ({"head": head} if head is not None else {})
    maps: dict[str, list[torch.Tensor]] = {name: [] for name in methods}
    masks, distractors, classes = [], [], []
    for index, row in enumerate(source.rows):
        data = np.load(source.base / row["masks"])
        frames, segments = source.load(index)
        size = data["sounding"].shape[-1]
        keep = [t for t in range(len(frames)) if not only_with_distractor or data["distractor"][t].any()]
        if not keep:
            continue
        with torch.no_grad():
            audio = model.encode_audio(segments[keep]).global_tokens  # (T, D): once for every method
        for name, method_head in methods.items():
            maps[name] += list(localization_maps(model, frames[keep], audio, size, method_head))
        for t in keep:
            event = next((e for e in row["events"] if e["start"] <= data["times"][t] < e["end"]), row["events"][-1])
            masks.append(data["sounding"][t])
            distractors.append(data["distractor"][t])
            classes.append(event["name"])
    if not masks:
        raise ValueError("no frame to score (no masks, or no distractor visible)")
    report: dict[str, Any] = {"served": "head" if head is not None else "paper"}
    for name, method_maps in maps.items():
        report[name] = localization_report(method_maps, masks, distractors, classes)
    for name, base in baseline_maps(masks, distractors).items():
        report[name] = localization_report(base, masks, distractors, classes)
    return report
