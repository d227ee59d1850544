"""The training side of the `cavsync` command line: `train` (its options generated from `TrainConfig`; torchrun
runs it on every rank), `synth`, `eval retrieval|classification|localization` and `train-localizer`. Each
command imports what it uses when it runs, so `cavsync -h` loads no torch."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: typer.Typer, context_settings: dict[str, Any]) -> None:
    """The training commands, added to the command line `app`."""
    _register_train(app, context_settings)
    app.command()(synth)
    evaluation = typer.Typer(
        help="Evaluate a checkpoint; prints JSON.", no_args_is_help=True, context_settings=context_settings
    )
    evaluation.command("retrieval")(eval_retrieval)
    evaluation.command("classification")(eval_classification)
    evaluation.command("localization")(eval_localization)
    app.add_typer(evaluation, name="eval")
    app.command("train-localizer")(train_localizer)


def _train_option(name: str, field: Any, default: object) -> inspect.Parameter:
    """A typer option for one TrainConfig field (`objective.<name>` for the objective), with its help and default."""
    from training.config import FIELD_HELP

    flag = "--" + name.replace("_", "-")
    kind = field.type if isinstance(field.type, str) else str(field.type)
    if kind.startswith("bool"):
        flag = f"{flag}/--no-{flag[2:]}"  # as argparse's BooleanOptionalAction
    option = typer.Option(flag, help=FIELD_HELP[name], show_default=default is not None)
    annotation: Any = {
        "str": str,
        "str | None": str | None,
        "int": int,
        "int | None": int | None,
        "float": float,
        "float | None": float | None,
        "bool": bool,
        "bool | None": bool | None,
        "tuple[float, float]": tuple[float, float],
    }[kind]
    required = default is None and name in ("data", "out_dir")
    return inspect.Parameter(
        name.replace(".", "__"),
        inspect.Parameter.KEYWORD_ONLY,
        default=inspect.Parameter.empty if required else default,
        annotation=Annotated[annotation, option],
    )


def _train(**flags: Any) -> None:
    """Pretrain CAV-MAE Sync (defaults: the published recipe).

    Several GPUs: torchrun --nproc-per-node N -m cavsync train ... (the same flags; every rank runs this command).
    """
    from training.config import from_flags
    from training.distributed import launch_rank
    from training.pretrain import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    path = train(from_flags({k.replace("__", "."): v for k, v in flags.items()}))
    if launch_rank() == 0:
        typer.echo(f"model: {path}", err=True)


def _register_train(app: typer.Typer, context_settings: dict[str, Any]) -> None:
    """`cavsync train`: one option per TrainConfig field, generated from the dataclass."""
    from training.config import flag_fields

    parameters = [_train_option(name, f, default) for name, f, default in flag_fields()]
    _train.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]  # typer reads the signature
    _train.__annotations__ = {p.name: p.annotation for p in parameters}
    app.command("train", context_settings=context_settings)(_train)


def synth(
    out: Annotated[Path, typer.Option(help="Output folder (created).")],
    n: Annotated[int, typer.Option(min=1, help="Number of clips.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed: the corpus is a function of (n, seed).")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Processes rendering and encoding clips.")] = 1,
) -> None:
    """Generate a synthetic audio-visual corpus of 10-s mp4 clips with localization masks."""
    from training.synth import generate

    generate(out, n, seed, workers)
    typer.echo(f"wrote {n} clips to {out}")


def eval_retrieval(
    checkpoint: Annotated[Path, typer.Option(help="Model checkpoint (.safetensors or official .pth).")],
    data: Annotated[Path, typer.Option(help="A media manifest or a `cavsync synth` folder.")],
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    workers: Annotated[int, typer.Option(min=0, help="Decoding processes.")] = 2,
) -> None:
    """Zero-shot retrieval, both directions, strategies diagonal_mean, diagonal_max, mean, max."""
    import json

    from model import load_model
    from training.data import MediaManifest
    from training.evaluate import encode_corpus, retrieval_report

    model = load_model(checkpoint)
    tokens = encode_corpus(model, MediaManifest.open(data, model.config), batch_size, workers)
    typer.echo(json.dumps(retrieval_report(tokens), indent=2))


def eval_classification(
    checkpoint: Annotated[Path, typer.Option(help="Model checkpoint.")],
    data: Annotated[Path, typer.Option(help="A labelled media manifest or a `cavsync synth` folder.")],
    mode: Annotated[str, typer.Option(help="linear (frozen encoder) or finetune.")] = "linear",
    single_label: Annotated[bool, typer.Option(help="CE + accuracy on each clip's first label.")] = False,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    holdout: Annotated[float, typer.Option(help="Share of the clips kept for scoring.")] = 0.2,
) -> None:
    """Train the clip classifier on part of the corpus and score it on the rest (mAP or accuracy)."""
    import json

    from model import load_model
    from training.classify import ClassifierConfig, evaluate_classification
    from training.data import MediaManifest

    if mode not in {"linear", "finetune"}:
        raise typer.BadParameter("mode must be linear or finetune")
    model = load_model(checkpoint)
    config = ClassifierConfig(1, not single_label, freeze_encoder=mode == "linear", epochs=epochs)
    report = evaluate_classification(model, MediaManifest.open(data, model.config), config, holdout)
    typer.echo(json.dumps(report | {"mode": mode}, indent=2))


def eval_localization(
    checkpoint: Annotated[Path, typer.Option(help="Model checkpoint (its localization head, if any, is scored too).")],
    data: Annotated[Path, typer.Option(help="A `cavsync synth` folder (it has the masks).")],
    head: Annotated[Path | None, typer.Option(help="A head adapter file (train-localizer's head.safetensors).")] = None,
    all_frames: Annotated[bool, typer.Option(help="Score every frame, not only those with a distractor.")] = False,
) -> None:
    """Sound-prompted localization (DenseAV-style mAP / mIoU, peak in the object / on the distractor) of
    each method (paper; head when there is one) next to a centre prior and the distractor."""
    import json

    from model import CheckpointError, load_localization_head, load_model
    from training.data import MediaManifest
    from training.evaluate import evaluate_localization

    model = load_model(checkpoint)
    try:
        loc_head = load_localization_head(head or checkpoint, model)
    except CheckpointError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    report = evaluate_localization(model, MediaManifest.open(data, model.config), not all_frames, loc_head)
    typer.echo(json.dumps(report, indent=2))


def train_localizer(
    checkpoint: Annotated[Path, typer.Option(help="The frozen backbone (.safetensors or official .pth).")],
    data: Annotated[Path, typer.Option(help="A media manifest (CSV/JSONL) or a `cavsync synth` folder.")],
    out_dir: Annotated[Path, typer.Option(help="Run folder: feature cache, last.pt (resume), head.safetensors.")],
    into: Annotated[
        Path | None, typer.Option(help="Also write the checkpoint with the head here (may be --checkpoint).")
    ] = None,
    layer: Annotated[int, typer.Option(min=0, help="Visual block whose patch tokens feed the head.")] = 2,
    hidden_dim: Annotated[int, typer.Option(min=1, help="Hidden width of the head's MLP.")] = 256,
    aggregation: Annotated[str, typer.Option(help="Frame score over patches: max or softmax.")] = "max",
    steps: Annotated[int, typer.Option(min=1)] = 300,
    batch_size: Annotated[int, typer.Option(min=2, help="Clips per batch (one frame each).")] = 64,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    temperature: Annotated[float, typer.Option(min=1e-4, help="InfoNCE temperature.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the head's init and of every batch.")] = 0,
    max_clips: Annotated[int | None, typer.Option(min=1, help="Use only the first clips of the data.")] = None,
    frame_stride: Annotated[int, typer.Option(min=1, help="Cache every k-th frame of each clip.")] = 2,
    workers: Annotated[int, typer.Option(min=0, help="Decoding processes for the feature cache.")] = 2,
) -> None:
    """Train a localization head on a frozen backbone (resumes from --out-dir); retrieval is unchanged."""
    from model import CheckpointError
    from training.localizer import LocalizerConfig
    from training.localizer import train_localizer as run

    try:
        cfg = LocalizerConfig(
            str(checkpoint),
            str(data),
            str(out_dir),
            into=str(into) if into else None,
            layer=layer,
            hidden_dim=hidden_dim,
            aggregation=aggregation,  # type: ignore[arg-type]  # a str: LocalizerConfig checks it
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            temperature=temperature,
            seed=seed,
            max_clips=max_clips,
            frame_stride=frame_stride,
            workers=workers,
        )
        path = run(cfg)
    except (CheckpointError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(f"wrote {path}" + (f" and {into}" if into else ""))
