"""The pretraining configuration: one frozen dataclass, defaults = the published CAV-MAE Sync recipe."""

from __future__ import annotations

import argparse
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


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command-line flags for every TrainConfig field (`--batch-size 64`, `--objective.lambda-c 0.01`).

    A flag that is not given keeps the field's default (the recipe's, for the objective).
    """
    parser = argparse.ArgumentParser(prog="cavsync train", description="Pretrain CAV-MAE Sync.")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "objective":
            for o in dataclasses.fields(ObjectiveConfig):
                _add(parser, f"objective.{o.name}", str(o.type))
        else:
            _add(parser, f.name, str(f.type))
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    objective = {k.split(".", 1)[1]: given.pop(k) for k in list(given) if k.startswith("objective.")}
    if "betas" in given:
        given["betas"] = tuple(given["betas"])
    missing = [name for name in ("data", "out_dir") if name not in given]
    if missing:
        parser.error("required: " + ", ".join("--" + m.replace("_", "-") for m in missing))
    return TrainConfig(**given, objective=dataclasses.replace(_recipe_objective(), **objective))


def _add(parser: argparse.ArgumentParser, name: str, kind: str) -> None:
    flag = "--" + name.replace("_", "-")
    if kind.startswith("bool"):
        parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
    elif kind.startswith("tuple"):
        parser.add_argument(flag, dest=name, type=float, nargs=2, default=None)
    else:
        caster = int if kind.startswith("int") else float if kind.startswith("float") else str
        parser.add_argument(flag, dest=name, type=caster, default=None)
