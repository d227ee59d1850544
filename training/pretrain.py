"""Pretraining: DDP over torchrun ranks (NCCL on GPU, gloo on CPU), bf16 autocast on GPU, gradient
accumulation, the published recipe, clipping, atomic checkpoints and exact resume.

    cavsync train --data DIR --out-dir RUN --preset tiny --epochs 30 --batch-size 64
    torchrun --nproc-per-node 8 -m cavsync train --data manifest.jsonl --out-dir RUN

`cavsync train` (cavsync/cli.py) is the one entry point, on one process or on every torchrun rank: its
flags are generated from `TrainConfig`, its settings (the ffmpeg binary) come from `cavsync/settings.py`;
this module is the library it calls (`train`). torchrun's RANK / WORLD_SIZE / LOCAL_RANK are read in
`training/distributed.py`.

Resume is automatic: a run restarted with the same out-dir continues from `last.ckpt` (model,
optimiser, scheduler, step, position in the epoch, RNG); every random choice of the data and the
masks is seeded by (seed, epoch, item), so the continuation is the uninterrupted run, bit for bit on
CPU.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from model import CAVMAESync, ModelConfig, preset, save_checkpoint
from training import distributed
from training.config import TrainConfig
from training.data import MediaManifest, OfficialManifest, PairDataset, collate_pairs, epoch_batches
from training.mae_init import init_from_mae

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run stops instead of corrupting its weights."""


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    position: int = 0  # optimizer steps done within `epoch`
    skipped: int = 0  # unreadable items so far


def model_config(cfg: TrainConfig) -> ModelConfig:
    return preset(cfg.preset, **json.loads(cfg.model_overrides))


def open_dataset(cfg: TrainConfig, config: ModelConfig) -> PairDataset:
    if cfg.data_format == "official":
        source: Any = OfficialManifest.open(cfg.data, config, cfg.label_csv)
    elif cfg.data_format == "media":
        source = MediaManifest.open(cfg.data, config)
    else:
        raise ValueError(f"unknown data_format {cfg.data_format!r} (media | official)")
    return PairDataset(source, cfg.seed, config, cfg.cache_dir)


def lr_factor(step: int, total: int, warmup_fraction: float, final_fraction: float) -> float:
    """Linear warmup over the first warmup_fraction of the steps, then cosine down to final_fraction."""
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def micro_batch_size(cfg: TrainConfig, world: int) -> int:
    per_rank, rest = divmod(cfg.batch_size, cfg.grad_accum * world)
    if rest or per_rank < 1:
        raise ValueError(
            f"batch_size {cfg.batch_size} is not divisible by grad_accum x world = {cfg.grad_accum * world}"
        )
    return per_rank


# ------------------------------------------------------------------------------------ one step
def train_step(
    model: torch.nn.Module,
    micro_batches: list[dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    dist: distributed.Dist,
) -> dict[str, float]:
    """Forward/backward over the micro-batches (gradient accumulation), clip, optimizer step."""
    ddp = isinstance(model, DistributedDataParallel)
    gather = distributed.gather_with_grad if (ddp and cfg.gather_negatives) else None
    bf16 = cfg.bf16 if cfg.bf16 is not None else dist.device.type == "cuda"
    totals: dict[str, float] = {}
    for k, batch in enumerate(micro_batches):
        last = k == len(micro_batches) - 1
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else contextlib.nullcontext()
        with sync:
            with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(
                    batch["audio"].to(dist.device, non_blocking=True),
                    batch["frame"].to(dist.device, non_blocking=True),
                    cfg.objective,
                    mask_noise=(batch["mask_noise_audio"].to(dist.device), batch["mask_noise_visual"].to(dist.device)),
                    gather=gather,
                )
            if not distributed.all_true(bool(torch.isfinite(out.loss)), dist.device):
                raise NonFiniteLossError(
                    f"non-finite loss (total {out.loss.item()}, mse_a {out.loss_mae_audio.item()}, "
                    f"mse_v {out.loss_mae_visual.item()}, nce {out.loss_contrastive.item()}): stopping; "
                    "lower the learning rate or check the data"
                )
            (out.loss / len(micro_batches)).backward()
        for name in ("loss", "loss_mae_audio", "loss_mae_visual", "loss_contrastive", "contrastive_accuracy"):
            totals[name] = totals.get(name, 0.0) + getattr(out, name).item() / len(micro_batches)
    params = [p for p in model.parameters() if p.requires_grad]
    totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return totals


# ------------------------------------------------------------------------------------ state
def save_state(path: Path, model: CAVMAESync, optimizer, scheduler, progress: Progress, cfg: TrainConfig) -> None:
    """Everything a resume needs, written to a temp file and renamed (a reader never sees half of it)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": vars(progress).copy(),
        "torch_rng": torch.get_rng_state(),
        "config": cfg.to_json(),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    save_checkpoint(
        model, path.with_name("model.safetensors"), {"step": str(progress.step), "train_config": cfg.to_json()}
    )


def load_state(path: Path, model: CAVMAESync, optimizer, scheduler) -> Progress:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return Progress(**state["progress"])


# ------------------------------------------------------------------------------------ loop
def _loader(dataset: PairDataset, cfg: TrainConfig, batches: list[list[int]]) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=cfg.num_workers,
        collate_fn=collate_pairs,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


def _steps(loader: DataLoader, accum: int) -> Iterator[list[dict[str, Any]]]:
    group: list[dict[str, Any]] = []
    for batch in loader:
        group.append(batch)
        if len(group) == accum:
            yield group
            group = []


class MetricsLog:
    """metrics.csv (and TensorBoard when asked) on the main rank."""

    def __init__(self, out_dir: Path, tensorboard: bool) -> None:
        self.path = out_dir / "metrics.csv"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, row: Mapping[str, float | torch.Tensor]) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if key != "step":
                    self.writer.add_scalar(key, value, int(row["step"]))


@dataclass
class Run:
    """Everything one pretraining run holds while it goes."""

    cfg: TrainConfig
    dist: distributed.Dist
    model: CAVMAESync
    wrapped: torch.nn.Module  # the DDP wrapper, or the model itself in a single process
    dataset: PairDataset
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    progress: Progress
    micro: int  # per-rank micro-batch
    steps_per_epoch: int
    metrics: MetricsLog | None
    saved_step: int = -1  # the step the last checkpoint holds

    @property
    def last(self) -> Path:
        return Path(self.cfg.out_dir) / "last.ckpt"

    def checkpoint(self) -> None:
        """Write last.ckpt + model.safetensors, once per step (the end of a run may ask twice)."""
        if self.dist.main and self.saved_step != self.progress.step:
            self.saved_step = self.progress.step
            save_state(self.last, self.model, self.optimizer, self.scheduler, self.progress, self.cfg)


def prepare(cfg: TrainConfig) -> Run:
    """Model, data, optimiser and schedule; resumes from `out_dir/last.ckpt` when there is one."""
    dist = distributed.setup(cfg.device)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model_config(cfg)
    torch.manual_seed(cfg.seed)
    model = CAVMAESync(config)
    if cfg.init_mae:
        init_from_mae(model, cfg.init_mae)
    model.to(dist.device)
    dataset = open_dataset(cfg, config)
    micro = micro_batch_size(cfg, dist.world)
    steps_per_epoch = len(dataset) // (micro * dist.world) // cfg.grad_accum
    if steps_per_epoch < 1:
        raise ValueError(f"{len(dataset)} items are fewer than one global batch of {cfg.batch_size}")
    total = steps_per_epoch * cfg.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.learning_rate, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, cfg.warmup_fraction, cfg.final_lr_fraction)
    )
    progress = Progress()
    if (out_dir / "last.ckpt").exists():
        progress = load_state(out_dir / "last.ckpt", model, optimizer, scheduler)
        log.info("resumed from %s at step %d", out_dir / "last.ckpt", progress.step)
    if dist.main:
        (out_dir / "config.json").write_text(cfg.to_json())
        (out_dir / "model_config.json").write_text(config.to_json())
    wrapped = DistributedDataParallel(model) if dist.world > 1 else model
    metrics = MetricsLog(out_dir, cfg.tensorboard) if dist.main else None
    return Run(cfg, dist, model, wrapped, dataset, optimizer, scheduler, progress, micro, steps_per_epoch, metrics)


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) pretraining; returns the path of the final `model.safetensors`."""
    run = prepare(cfg)
    total = run.steps_per_epoch * cfg.epochs
    bar = tqdm(total=total, initial=run.progress.step, disable=not run.dist.main, desc="pretrain", unit="step")
    try:
        run_epochs(run, bar)
    finally:
        bar.close()
        distributed.teardown()
    return Path(cfg.out_dir) / "model.safetensors"


def run_epochs(run: Run, bar: tqdm) -> None:
    cfg, progress = run.cfg, run.progress
    started, samples = time.perf_counter(), 0
    while progress.epoch < cfg.epochs:
        run.dataset.set_epoch(progress.epoch)
        batches = epoch_batches(len(run.dataset), run.micro, cfg.seed, progress.epoch, run.dist.rank, run.dist.world)
        batches = batches[: run.steps_per_epoch * cfg.grad_accum][progress.position * cfg.grad_accum :]
        for group in _steps(_loader(run.dataset, cfg, batches), cfg.grad_accum):
            progress.skipped += sum(b["skipped"] for b in group)
            result: dict[str, float] = {}
            if distributed.all_true(all("audio" in b for b in group), run.dist.device):
                result = train_step(run.wrapped, group, run.optimizer, cfg, run.dist)
                samples += sum(len(b["index"]) for b in group) * run.dist.world
            else:
                log.warning("step %d: a rank has only unreadable items; step skipped", progress.step)
            run.scheduler.step()
            progress.step += 1
            progress.position += 1
            bar.update(1)
            if result and run.metrics and (progress.step % cfg.log_every == 0 or progress.step == 1):
                rate = samples / max(1e-9, time.perf_counter() - started)
                row = {"step": progress.step, "epoch": progress.epoch, "lr": run.scheduler.get_last_lr()[0]}
                run.metrics.write(row | result | {"skipped": progress.skipped, "samples_per_s": rate})
                bar.set_postfix(loss=f"{result['loss']:.3f}", acc=f"{result['contrastive_accuracy']:.2f}")
            if cfg.max_steps is not None and progress.step >= cfg.max_steps:
                run.checkpoint()
                return
            if progress.step % cfg.checkpoint_every == 0:
                run.checkpoint()
        progress.epoch += 1
        progress.position = 0
    run.checkpoint()


if __name__ == "__main__":  # the old second command line: say where it went rather than train with other rules
    sys.exit(
        "error: `python -m training.pretrain` is no longer a command; run `cavsync train ...` (one process) or "
        "`torchrun --nproc-per-node N -m cavsync train ...` (several), with the same flags"
    )
