"""The localization head's sweep: feature layer x head size x aggregation x steps, on a frozen backbone.

Caches the frozen features of a training corpus and of a validation corpus once (every visual layer),
trains one head per (layer, hidden, aggregation) and scores it on the validation frames where the
silent distractor is visible after each number of steps. Prints one JSON line per measurement.

    OMP_NUM_THREADS=2 python bench/sweep_localizer.py --checkpoint checkpoints/cavsync_tiny_demo.safetensors \
        --train /tmp/loc/train --val /tmp/loc/val --cache /tmp/loc/sweep-cache.pt
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from model import load_model
from model.localization import LocalizationHead, LocalizationHeadConfig, cosine_grid, upsample
from training.data import MediaManifest
from training.evaluate import localization_report
from training.localizer import FrozenFeatures, LocalizerConfig, encode_features, fit_head


def load_or_encode(model, data: str, layers: tuple[int, ...], cache: Path, **kw) -> tuple[dict, torch.Tensor]:  # noqa: ANN001, ANN003
    if cache.exists():
        saved = torch.load(cache, weights_only=True)
        return {int(k): v for k, v in saved["visual"].items()}, saved["audio"]
    visual, audio = encode_features(model, MediaManifest.open(data, model.config), layers, **kw)
    torch.save({"visual": {str(k): v for k, v in visual.items()}, "audio": audio}, cache)
    return visual, audio


def val_targets(data: str) -> tuple[list[tuple[int, int]], list[np.ndarray], list[np.ndarray], list[str]]:
    """(clip, frame) of every validation frame with the distractor visible, its masks and class."""
    rows = [json.loads(line) for line in (Path(data) / "metadata.jsonl").read_text().splitlines()]
    where, masks, distractors, classes = [], [], [], []
    for i, row in enumerate(rows):
        npz = np.load(Path(data) / row["masks"])
        for t in range(len(npz["times"])):
            if npz["distractor"][t].any():
                at = npz["times"][t]
                event = next((e for e in row["events"] if e["start"] <= at < e["end"]), row["events"][-1])
                where.append((i, t))
                masks.append(npz["sounding"][t])
                distractors.append(npz["distractor"][t])
                classes.append(event["name"])
    return where, masks, distractors, classes


def score(head: LocalizationHead, visual: torch.Tensor, audio: torch.Tensor, targets: tuple) -> dict:  # noqa: ANN001
    where, masks, distractors, classes = targets
    clips, times = torch.tensor([w[0] for w in where]), torch.tensor([w[1] for w in where])
    with torch.no_grad():
        grid = cosine_grid(audio[clips, times], head(visual[clips, times].float()))
    size = masks[0].shape[0]
    maps = list(upsample(grid, size, size))
    return localization_report(maps, masks, distractors, classes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--layers", default="0,1,2,3,4")
    parser.add_argument("--hidden", default="128,256")
    parser.add_argument("--aggregations", default="max,softmax")
    parser.add_argument("--steps", default="200,400,800,1600")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-clips", type=int, default=600)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--frame-stride", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.05)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.checkpoint)
    layers = tuple(int(x) for x in args.layers.split(","))
    kw = {"max_clips": args.max_clips, "frame_stride": args.frame_stride}
    train_v, train_a = load_or_encode(model, args.train, layers, Path(args.cache + ".train"), **kw)
    val_v, val_a = load_or_encode(model, args.val, layers, Path(args.cache + ".val"))  # every frame
    targets = val_targets(args.val)
    checkpoints = sorted(int(x) for x in args.steps.split(","))
    grid = itertools.product(layers, args.hidden.split(","), args.aggregations.split(","), args.seeds.split(","))
    for layer, hidden, aggregation, seed in grid:
        cfg = LocalizerConfig(
            "-",
            "-",
            "-",
            layer=layer,
            hidden_dim=int(hidden),
            aggregation=aggregation,  # type: ignore[arg-type]
            steps=checkpoints[-1],
            seed=int(seed),
            lr=args.lr,
            temperature=args.temperature,
        )
        torch.manual_seed(cfg.seed)
        head = LocalizationHead(LocalizationHeadConfig(model.config.embed_dim, layer, int(hidden)))
        optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr)
        started = time.perf_counter()
        done = 0
        for target in checkpoints:
            cfg_k = LocalizerConfig(**{**cfg.__dict__, "steps": target})
            fit_head(head, FrozenFeatures(train_v[layer], train_a), cfg_k, optimizer, start=done)
            done = target
            report = score(head, val_v[layer], val_a, targets)
            row = {
                "layer": layer,
                "hidden": int(hidden),
                "aggregation": aggregation,
                "seed": cfg.seed,
                "steps": target,
                "lr": cfg.lr,
                "temperature": cfg.temperature,
                "train_s": round(time.perf_counter() - started, 1),
            }
            print(json.dumps(row | {k: round(v, 4) for k, v in report.items() if isinstance(v, float)}), flush=True)


if __name__ == "__main__":
    main()
