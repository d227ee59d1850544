"""The `cavsync` command line. Each command is a thin wrapper over a library function; defaults come from
`Settings` (the `CAVSYNC_*` variables), so `index` and `serve` use the same model and data dir."""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from cavsync import cli_training
from cavsync.settings import Settings, env_name
from model.media import use_ffmpeg

HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(help="cavsync: audio-visual search with CAV-MAE Sync.", no_args_is_help=True, context_settings=HELP)


def settings() -> Settings:
    """The settings of the environment; an invalid one is a usage error naming the variable."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        raise typer.BadParameter("; ".join(map(_problem, exc.errors())), param_hint="environment") from exc


def _problem(error: Any) -> str:
    """One invalid setting, named by its variable with the value given; a rule over several settings (no `loc`)
    by its message alone (its input is every setting, the API key among them: never printed)."""
    if not error["loc"]:
        return str(error["msg"])
    return f"{env_name(str(error['loc'][0]))}: {error['msg']} (got {error['input']!r})"


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    use_ffmpeg(settings().ffmpeg)


def require_model(path: Path, given_as: str) -> Path:
    """The model checkpoint, or a usage error naming the setting (or option) and its value."""
    if not path.is_file():
        raise typer.BadParameter(f"{given_as}={path}: no such checkpoint file", param_hint="model")
    return path


@app.command("convert-checkpoint")
def convert_checkpoint(
    official: Annotated[Path, typer.Argument(help="Official .pth state dict (e.g. cav_mae_sync.pth).")],
    out: Annotated[Path, typer.Argument(help="Output .safetensors file.")],
    num_heads: Annotated[int | None, typer.Option(help="Encoder heads (default: embed_dim / 64).")] = None,
    decoder_num_heads: Annotated[
        int | None, typer.Option(help="Decoder heads (default: decoder_embed_dim / 32).")
    ] = None,
) -> None:
    """Convert an official checkpoint to cavsync's safetensors format (weights + config)."""
    from model.checkpoint import CheckpointError, load_model, save_checkpoint

    sizes = {k: v for k, v in (("num_heads", num_heads), ("decoder_num_heads", decoder_num_heads)) if v}
    try:
        model = load_model(official, **sizes)
    except CheckpointError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    save_checkpoint(model, out, {"source": official.name})
    params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    typer.echo(f"wrote {out}: {params / 1e6:.1f} M values, config {model.config.to_json()}")


DATA_DIR = typer.Option(
    help="Where the token store and the SQLite catalog live (default: $CAVSYNC_DATA_DIR, else data)."
)
DATABASE_URL = typer.Option(help="SQLAlchemy URL (default: $CAVSYNC_DATABASE_URL, else SQLite in the data dir).")
MODEL = typer.Option(help="Model checkpoint (default: $CAVSYNC_MODEL_PATH, else the demo checkpoint).")


def _settings_with(**given: object) -> Settings:
    """The environment's settings, with the options that were given (None: not given) put over them."""
    base = settings()
    return base.model_copy(update={k: v for k, v in given.items() if v is not None})


FACTORY = typer.Option(help="FAISS factory of the per-frame indexes (default: by size) for a new store or compact.")


MANIFESTS = {".csv": "a CSV with a `path` column", ".jsonl": 'one {"path": ...} per line', ".txt": "one path per line"}


def fail(message: str, code: int = 1) -> typer.Exit:
    """Say what went wrong on stderr; the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


def media_to_index(target: Path) -> list[Path]:
    """What `cavsync index TARGET` indexes: a folder's media files, a manifest's paths (announced as such), or one
    media file; an empty folder or manifest, an invalid manifest and a file that is no media are errors."""
    from indexer.ingest.pipeline import MEDIA_SUFFIXES, list_media

    kinds = ", ".join(sorted(MEDIA_SUFFIXES))
    if target.is_dir():
        found = list_media(target)
        if not found:
            raise fail(f"no media file under {target} (looked for {kinds}): nothing to index")
        return found
    suffix = target.suffix.lower()
    if suffix in MANIFESTS:
        try:
            found = list_media(target)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:  # JSON, a missing `path`, binary
            reason = f"no {exc} field/column" if isinstance(exc, KeyError) else str(exc)
            raise fail(f"{target} is not a valid manifest ({MANIFESTS[suffix]}): {reason}", 2) from exc
        typer.echo(f"reading {target} as a manifest of {len(found)} paths", err=True)
        if not found:
            raise fail(f"{target} lists no path: nothing to index")
        if not any(path.exists() for path in found):
            raise fail(
                f"none of the {len(found)} paths {target} lists exists (the first: {found[0]}): is it a manifest?", 2
            )
        return found
    if suffix not in MEDIA_SUFFIXES:
        from model.media import MediaError
        from model.probe import probe

        try:
            probe(target)
        except MediaError as exc:
            manifests = ", ".join(f"{k} ({v})" for k, v in MANIFESTS.items())
            raise fail(f"{target} is neither a media file ({exc}) nor a manifest: {manifests}", 2) from exc
    return [target]


@app.command()
def index(
    target: Annotated[Path, typer.Argument(help="A media file, a folder, or a manifest (.csv/.jsonl/.txt).")],
    model: Annotated[Path | None, MODEL] = None,
    data_dir: Annotated[Path | None, DATA_DIR] = None,
    database_url: Annotated[str | None, DATABASE_URL] = None,
    workers: Annotated[int, typer.Option(min=1, help="Decoding processes.")] = 2,
    batch_clips: Annotated[int, typer.Option(min=1, help="Clips encoded and committed together.")] = 32,
    factory: Annotated[str | None, FACTORY] = None,
) -> None:
    """Index media: decode, encode per-frame tokens, add them to the store and the catalog.

    Exits with status 1 when any file failed (the summary lists them) or when there is nothing to index (an
    empty folder or manifest), 2 for a manifest that cannot be read or a file that is no media.
    """
    import json

    from indexer.catalog.tables import open_catalog
    from indexer.cluster.corpus import open_corpus
    from indexer.ingest.pipeline import Indexer, model_id_of
    from model import load_model
    from model.inference import default_device

    settings = _settings_with(model_path=model, data_dir=data_dir, database_url=database_url)
    path = require_model(settings.model_path, "--model" if model else env_name("model_path"))
    data = settings.data()
    if not target.exists():
        raise typer.BadParameter(f"{target}: no such file or folder", param_hint="TARGET")
    files = media_to_index(target)
    net = load_model(path).to(settings.device or default_device())
    indexer = Indexer(
        net,
        model_id_of(path),
        open_corpus(data, factory=factory),  # one store, or CAVSYNC_SHARDS shards
        open_catalog(data.catalog_url),
        workers=workers,
        batch_clips=batch_clips,
    )
    summary = indexer.index(files)
    typer.echo(json.dumps(vars(summary), indent=2))
    if summary.failed:
        typer.echo(f"error: {summary.failed} of {summary.total} file(s) failed (see errors above)", err=True)
        raise typer.Exit(code=1)


class Direction(enum.StrEnum):
    AUDIO_TO_VIDEO = "audio-to-video"
    VIDEO_TO_AUDIO = "video-to-audio"


class StrategyName(enum.StrEnum):  # model.similarity.STRATEGIES (not imported here: it imports torch)
    DIAGONAL_MEAN = "diagonal_mean"
    DIAGONAL_MAX = "diagonal_max"
    MEAN = "mean"
    MAX = "max"


def results_table(answer: Any) -> str:
    """A search answer (service.schemas.SearchResponse) as a table: rank, score, video id, moments, uri."""
    query = answer.query
    source = f"video {query.video_id}" if query.source == "video" else query.source
    lines = [
        f"{answer.target} tracks searched with {source} ({query.frames} frames"
        + (", truncated" if query.truncated else "")
        + f"), {answer.strategy}, index {answer.index_version}, {answer.timings.total_ms:.0f} ms",
    ]
    if not answer.results:
        return "\n".join([*lines, "no result: the index holds no video with that modality"])
    lines.append(f"{'#':>3}  {'score':>6}  {'video':>6}  {'moments (start-end s: score)':<44}  uri")
    for rank, hit in enumerate(answer.results, 1):
        moments = ", ".join(f"{m.start:.2f}-{m.end:.2f}: {m.score:.3f}" for m in hit.moments)
        lines.append(f"{rank:>3}  {hit.score:>6.3f}  {hit.video_id:>6}  {moments:<44}  {hit.uri}")
    return "\n".join(lines)


@app.command()
def search(
    query: Annotated[
        Path | None,
        typer.Argument(help="An audio or video file (its sound for audio-to-video, its pictures for video-to-audio)."),
    ] = None,
    video_id: Annotated[
        int | None, typer.Option(min=1, help="Instead of a file: an indexed video's stored track is the query.")
    ] = None,
    direction: Annotated[Direction, typer.Option(help="Sound -> videos, or pictures -> sounds.")] = (
        Direction.AUDIO_TO_VIDEO
    ),
    top_k: Annotated[int, typer.Option(min=1, max=100, help="How many videos.")] = 10,
    moments: Annotated[int, typer.Option(min=1, max=10, help="Non-overlapping moments per video, at most.")] = 3,
    strategy: Annotated[StrategyName, typer.Option(help="How aligned frames are scored.")] = (
        StrategyName.DIAGONAL_MEAN
    ),
    start: Annotated[float, typer.Option(min=0, help="With --video-id: where the query starts, s.")] = 0.0,
    end: Annotated[
        float | None,
        typer.Option(min=0, help="With --video-id: where it ends, s (default: the video's end, 60 s at most)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the API's JSON answer instead of a table.")] = (
        False
    ),
    model: Annotated[Path | None, MODEL] = None,
    data_dir: Annotated[Path | None, DATA_DIR] = None,
    database_url: Annotated[str | None, DATABASE_URL] = None,
) -> None:
    """Search the local index with a file (or an indexed video): the ranked videos and their moments, as
    POST /search/audio-to-video or /search/video-to-audio answers them (the same code; `--json`: the same JSON).

    Exits with status 2 for a query that cannot be used (the reason is printed), 1 when there is no index yet.
    """
    if (query is None) == (video_id is None):
        raise typer.BadParameter("give a query FILE or --video-id (one of them)", param_hint="QUERY")
    if query is not None and (start or end is not None):
        raise typer.BadParameter(
            f"--start/--end choose part of an indexed video (with --video-id); cut a file first, e.g. "
            f"ffmpeg -ss {start:g} -to {end if end is not None else start + 10:g} -i {query} part.wav",
            param_hint="--start/--end",
        )
    if query is not None and not query.is_file():
        raise typer.BadParameter(f"{query}: no such file", param_hint="QUERY")
    from model import MediaError
    from service import queries
    from service.engine import Engine
    from service.errors import ServiceError

    config = _settings_with(model_path=model, data_dir=data_dir, database_url=database_url).service_config()
    require_model(config.model_path, "--model" if model else env_name("model_path"))
    engine = Engine.start(config)
    if engine.version is None:
        raise fail(f"no index in {config.data.index}: index media first (cavsync index FOLDER)")
    modality: Any = "audio" if direction == Direction.AUDIO_TO_VIDEO else "visual"
    options = queries.SearchOptions(top_k=top_k, strategy=strategy.value, moments=moments)
    try:
        if query is not None:
            answer = queries.search_file(engine, engine.version, query, modality=modality, options=options)
        else:
            part = queries.time_range(video_id, start, end)
            answer = queries.search_media(
                engine, engine.version, modality=modality, upload=None, video_id=video_id, options=options, part=part
            )
    except (MediaError, ServiceError) as exc:
        raise fail(str(exc.detail if isinstance(exc, ServiceError) else exc), 2) from exc
    typer.echo(answer.model_dump_json(indent=2) if json_output else results_table(answer))


@app.command()
def migrate(
    data_dir: Annotated[Path | None, DATA_DIR] = None,
    database_url: Annotated[str | None, DATABASE_URL] = None,
) -> None:
    """Create or upgrade the catalog's schema (what every command also does before it uses the catalog)."""
    from indexer.catalog.tables import migrate as upgrade

    data = _settings_with(data_dir=data_dir, database_url=database_url).data()
    upgrade(data.catalog_url)
    typer.echo(f"catalog schema up to date: {data.catalog_url.split('@')[-1]}")


@app.command()
def delete(
    video_ids: Annotated[list[int], typer.Argument(help="Catalog ids of the videos to remove.")],
    data_dir: Annotated[Path | None, DATA_DIR] = None,
    database_url: Annotated[str | None, DATABASE_URL] = None,
) -> None:
    """Remove videos from search (their tokens leave the index at once; `compact` reclaims the space) and the
    managed copies of uploaded ones (files of your own are never deleted)."""
    from indexer.catalog.tables import open_catalog
    from indexer.cluster.corpus import open_corpus
    from indexer.ingest.pipeline import delete_videos

    data = _settings_with(data_dir=data_dir, database_url=database_url).data()
    store, sessions = open_corpus(data), open_catalog(data.catalog_url)
    removed = delete_videos(video_ids, store, sessions, data.media)
    typer.echo(f"deleted {removed} video(s)")


@app.command()
def compact(
    data_dir: Annotated[Path | None, DATA_DIR] = None,
    factory: Annotated[str | None, FACTORY] = None,
) -> None:
    """Rewrite the token store without deleted clips, with index types chosen for its size (or given)."""
    from indexer.cluster.corpus import open_corpus

    data = _settings_with(data_dir=data_dir).data()
    version = open_corpus(data, factory=factory).compact()
    typer.echo(f"compacted into {version}" if version else "nothing to compact")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    model: Annotated[Path | None, MODEL] = None,
    data_dir: Annotated[Path | None, DATA_DIR] = None,
    database_url: Annotated[str | None, DATABASE_URL] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the REST API with uvicorn (every other setting: CAVSYNC_* variables, see cavsync/settings.py)."""
    import uvicorn

    from cavsync.app import build_app

    config = _settings_with(model_path=model, data_dir=data_dir, database_url=database_url)
    require_model(config.model_path, "--model" if model else env_name("model_path"))
    uvicorn.run(build_app(config), host=host, port=port, log_level=log_level)


cli_training.register(app, HELP)  # train, synth, eval, train-localizer

if __name__ == "__main__":
    app()
