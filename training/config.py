"""The pretraining configuration: one frozen dataclass, defaults = the published CAV-MAE Sync recipe."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from model import ObjectiveConfig


def _recipe_objective() -> ObjectiveConfig:
    return ObjectiveConfig(
        mask_ratio_audio=0.75, mask_ratio_visual=0.75, norm_pix_loss=True, lambda_c=0.1, lambda_r=1.0
    )


@dataclass(frozen=True)
class TrainConfig:
    data: str  # a media manifest (CSV/JSONL), a `cavsync synth` folder, or an official data JSON
    out_dir: str
    preset: str = "base"
    model_overrides: str = "{}"  # JSON object of ModelConfig fields, e.g. '{"num_registers": 4}'
    data_format: str = "media"  # media | official
    label_csv: str | None = None
    cache_dir: str | None = None  # decoded clips kept here (fp16) after the first epoch
    epochs: int = 25
    batch_size: int = 512  # global: per-rank micro-batch x grad_accum x world size
    grad_accum: int = 1
    base_lr: float = 2e-4  # at base_batch; scaled linearly with batch_size unless lr is given
    base_batch: int = 512
    lr: float | None = None
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 5e-7
    warmup_fraction: float = 0.1
    final_lr_fraction: float = 0.1
    clip_grad_norm: float = 10.0
    objective: ObjectiveConfig = field(default_factory=_recipe_objective)
    gather_negatives: bool = True  # InfoNCE over every rank's batch (the official code used each GPU's share)
    bf16: bool | None = None  # default: on for CUDA
    device: str = "auto"
    seed: int = 0
    num_workers: int = 2
    checkpoint_every: int = 500  # optimizer steps
    log_every: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs)
    init_mae: str | None = None  # ImageNet MAE ViT-B checkpoint to start from
    tensorboard: bool = False

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / self.base_batch

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


# What each flag of `cavsync train` does (its `--help`); objective fields prefixed.
FIELD_HELP = {
    "data": "A media manifest (CSV/JSONL), a `cavsync synth` folder, or an official data JSON. Required.",
    "out_dir": "Run folder: config, metrics, checkpoints, model.safetensors. Required.",
    "preset": "Model size preset (base = the released model, tiny).",
    "model_overrides": "JSON object of ModelConfig fields, e.g. '{\"num_registers\": 4}'.",
    "data_format": "media (decoded by ffmpeg) or official (JSON + JPEG frames + wav).",
    "label_csv": "Label index CSV of the official format.",
    "cache_dir": "Decoded clips kept here (fp16) after the first epoch.",
    "epochs": "Passes over the data.",
    "batch_size": "Global batch: per-rank micro-batch x grad-accum x world size.",
    "grad_accum": "Micro-batches accumulated per optimizer step.",
    "base_lr": "Learning rate at base-batch; scaled linearly with batch-size unless lr is given.",
    "base_batch": "The batch size base-lr is given for.",
    "lr": "Learning rate, unscaled (overrides base-lr).",
    "betas": "Adam betas.",
    "weight_decay": "Adam weight decay.",
    "warmup_fraction": "Share of the steps with a linear warmup.",
    "final_lr_fraction": "Cosine schedule ends at this share of the learning rate.",
    "clip_grad_norm": "Gradient norm clipping.",
    "gather_negatives": "InfoNCE over every rank's batch (off: each GPU's share, as the official code).",
    "bf16": "bf16 autocast (default: on for CUDA).",
    "device": "auto, cpu, cuda, cuda:N.",
    "seed": "Seed of every random choice.",
    "num_workers": "DataLoader worker processes.",
    "checkpoint_every": "Optimizer steps between checkpoints (last.ckpt).",
    "log_every": "Optimizer steps between metric rows.",
    "max_steps": "Stop after this many optimizer steps (smoke runs).",
    "init_mae": "ImageNet MAE ViT-B checkpoint to start from.",
    "tensorboard": "Also log to TensorBoard (needs the tensorboard package).",
    "objective.mask_ratio_audio": "Share of the audio patches masked.",
    "objective.mask_ratio_visual": "Share of the visual patches masked.",
    "objective.norm_pix_loss": "Reconstruction targets normalised per patch.",
    "objective.temperature": "InfoNCE temperature.",
    "objective.symmetric_contrastive": "InfoNCE in both directions.",
    "objective.lambda_c": "Weight of the contrastive loss.",
    "objective.lambda_r": "Weight of the reconstruction loss.",
}


def flag_fields() -> list[tuple[str, dataclasses.Field[object], object]]:
    """Every flag of `cavsync train`: (name, field, default), objective fields as `objective.<name>` with the
    recipe's defaults."""
    recipe = _recipe_objective()
    flags: list[tuple[str, dataclasses.Field[object], object]] = []
    for f in dataclasses.fields(TrainConfig):
        if f.name == "objective":
            flags += [(f"objective.{o.name}", o, getattr(recipe, o.name)) for o in dataclasses.fields(ObjectiveConfig)]
        else:
            flags.append((f.name, f, None if f.default is dataclasses.MISSING else f.default))
    return flags


def from_flags(given: dict[str, object]) -> TrainConfig:
    """A TrainConfig from flag values by name (`objective.<name>` for the objective); None keeps the default."""
    given = {k: v for k, v in given.items() if v is not None}
    objective = {k.split(".", 1)[1]: given.pop(k) for k in list(given) if k.startswith("objective.")}
    if "betas" in given:
        given["betas"] = tuple(given["betas"])  # type: ignore[arg-type]  # a 2-sequence of floats from the flag
    return TrainConfig(**given, objective=dataclasses.replace(_recipe_objective(), **objective))  # type: ignore[arg-type]  # values typed by their flags
