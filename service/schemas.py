"""Request and response models (pydantic v2): what the OpenAPI schema says about every answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FiniteFloat, ValidationInfo, field_validator

from indexer.catalog.names import shown_name
from indexer.catalog.tables import FileState, JobState, VideoStatus, display_name
from indexer.search.moments import MATCH_TOLERANCE
from model import Modality, Strategy

MAX_ID = 2**31 - 1  # catalog ids are 32-bit integers (PostgreSQL INTEGER)
MAX_QUERY_TOKENS = 1024  # rows of a raw-token query
MAX_MOMENTS = 10  # moments per video in a search answer


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _ms(value: float) -> float:
    return round(value, 3)


# Times in answers are rounded to the millisecond (7.68, never 7.680000000000001).
Seconds = Annotated[float, AfterValidator(_ms)]

# The catalog writes UTC; SQLite gives it back without a zone. Answers always carry the offset (RFC 3339).
UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


def _shown(text: str) -> str:
    return shown_name(text, None)


# Text that names a file (a name, a path, an error): its control and bidi characters shown as `\uXXXX`, so it
# displays as what it is (`indexer.catalog.names`).
Shown = Annotated[str, AfterValidator(_shown)]


class Model(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), from_attributes=True)


# ------------------------------------------------------------------------------------ search
class Moment(Model):
    start: Seconds = Field(description="Seconds from the start of the video (rounded to the ms).")
    end: Seconds = Field(description="End of the aligned frames, seconds (at most the video's duration).")
    score: float = Field(
        description="The query's score at this placement (the chosen strategy, against the target modality: "
        "what ranks the video). A video's moments are sorted by it, best first."
    )
    match: float | None = Field(
        None,
        description="The query's score against the video's track of the query's own modality at this placement "
        "(an audio query: how much the video sounds like it there), which placed the moment; null when the "
        "query's modality is unknown (raw tokens without `modality`) or the video lacks it. Moments placed this "
        f"way are the placements matching within {MATCH_TOLERANCE} of the best one.",
    )
    frame_scores: list[float] = Field(
        description="Cosine of each aligned (query frame, video frame) pair of the target modality; their "
        "sum over the query's frames is the diagonal_mean score (their mean when the query fits in the video)."
    )


NAME = (
    "What to call the video: the name an upload was sent with, else its file's name; control and bidirectional "
    "characters (NUL, U+202E, ...) written as the text `\\uXXXX`, so it shows as what it is."
)
URI = (
    "Where its file is on the server (an upload: its managed copy, named by content; empty for an upload that "
    "could not be indexed: nothing of it is kept); control and bidirectional characters written as in `name`."
)


class VideoResult(Model):
    video_id: int
    uri: Shown = Field(description=URI)
    name: Shown = Field(description=NAME)
    score: float = Field(
        description="The score of the video's first moment (the best of its moments); videos are ranked by it."
    )
    moments: list[Moment] = Field(
        description="Up to `moments` non-overlapping placements of the query in the video, sorted by `score`, "
        "best first. The query is slid over the video's whole track, one frame (0.64 s) at a time (a query "
        "longer than the video is scored over all of its frames, those outside the video counting 0); a query "
        "with its own modality known (media uploads, indexed videos) is placed where it matches the video's "
        "track of that modality (an audio excerpt: where the video sounds like it), when the video has one: "
        f"the placements whose `match` is within {MATCH_TOLERANCE} of the best, so fewer than `moments` may "
        "come back. Otherwise the placements are the best by `score`."
    )


class Timings(Model):
    decode_ms: float = Field(description="Decoding and preprocessing the query media (0 for stored tokens).")
    encode_ms: float = Field(description="Running the encoder (0 for stored or raw tokens).")
    search_ms: float = Field(
        description="Retrieval: candidates, the exact per-frame re-rank and the catalog look-up; the retrieval "
        "core does candidates and re-rank in one call, so the re-rank is included here, not reported apart."
    )
    total_ms: float


class QueryInfo(Model):
    source: Literal["upload", "video", "tokens", "file"] = Field(
        description="What the query was: an upload, an indexed video (`video_id`), raw tokens, or a file on the "
        "server's disk (the command line's `cavsync search FILE`)."
    )
    video_id: int | None = None
    frames: int = Field(description="Query frames used: one per 0.64 s (16 for a 10-s query), every one of them.")
    truncated: bool = Field(
        description="The query used less than the media given: the upload, or the indexed video (its start-end "
        "part), holds more frames than the longest query (CAVSYNC_MAX_QUERY_S, 180 s by default), and its first "
        "frames up to that length were used. An upload up to 1 s longer than the longest query is accepted and cut "
        "so; a longer one is refused (413)."
    )


class SearchResponse(Model):
    target: Modality = Field(description="The modality searched: visual for audio->video, audio for video->audio.")
    strategy: Strategy
    index_version: str | None
    query: QueryInfo
    results: list[VideoResult]
    timings: Timings


class TokensQuery(Model):
    """Raw per-frame query tokens: T_q rows of D floats (normalised by the service)."""

    tokens: list[list[FiniteFloat]] = Field(
        min_length=1, max_length=MAX_QUERY_TOKENS, description="(T_q, D) global tokens."
    )
    target: Modality = Field(description="Which stored tokens to search: audio or visual.")
    modality: Modality | None = Field(
        None,
        description="The tokens' own modality, if known: the query is then placed in each hit "
        "where it matches the hit's track of that modality (as file queries are).",
    )
    top_k: int = Field(10, ge=1, le=100)
    moments: int = Field(3, ge=1, le=MAX_MOMENTS, description="Moments per video, at most.")
    strategy: Strategy = "diagonal_mean"


# ------------------------------------------------------------------------------------ localization
LocalizeMethod = Literal["head", "paper"]


class Peak(Model):
    x: int = Field(description="Column of the peak in `map` (the resized whole picture).")
    y: int = Field(description="Row of the peak in `map`.")
    source_x: int = Field(description="Column of the peak in the source picture's pixels.")
    source_y: int = Field(description="Row of the peak in the source picture's pixels.")
    value: float


class Crop(Model):
    x: int = Field(description="Left of this model input in `map` pixels.")
    y: int = Field(description="Top, in `map` pixels.")
    size: int = Field(description="Side of the square crop, in `map` pixels (the model's image size).")
    grid: list[list[float]] = Field(description="(G, G) the crop's map on the model's patch grid.")


class ValueRange(Model):
    min: float = Field(description="The smallest value of `map`.")
    max: float = Field(description="The largest value of `map`.")
    scale: tuple[float, float] = Field(description="Every map value lies in this range (a cosine: [-1, 1]).")


class LocalizeTimings(Model):
    decode_ms: float = Field(description="Decoding and preprocessing the frame and the audio.")
    encode_ms: float = Field(description="Encoding (audio segment, frame crops) and the similarity map.")
    total_ms: float


class LocalizeResponse(Model):
    method: LocalizeMethod = Field(
        description="head: the checkpoint's learned localization head (the default when it has one); "
        "paper: the cosine of the audio global token with each final visual patch token (CAV-MAE Sync)."
    )
    map: list[list[float]] = Field(
        description="(map_height, map_width) the map over the WHOLE picture, resized so that its short side is "
        "the model's image size: square crops of that size cover it (`crops`), each crop's patch grid is "
        "upsampled (bilinear) and overlapping crops are averaged."
    )
    map_width: int
    map_height: int
    frame_width: int = Field(description="The source picture's width in pixels (the PNG has its aspect ratio).")
    frame_height: int = Field(description="The source picture's height in pixels.")
    value_range: ValueRange
    crops: list[Crop]
    grid_size: int = Field(description="G: 7 for the tiny preset, 14 for base.")
    image_size: int = Field(description="The model's square input (112 for tiny, 224 for base).")
    peak: Peak
    frame_time: Seconds = Field(description="Seconds into the video of the frame used (0 for an image).")
    audio_time: Seconds = Field(description="Centre of the audio segment used, seconds into the audio.")
    timings: LocalizeTimings


# ------------------------------------------------------------------------------------ catalog
class ClipInfo(Model):
    id: int
    start: Seconds
    duration: Seconds
    modalities: str = Field(description='Comma-separated, e.g. "audio,visual".')


class VideoInfo(Model):
    id: int
    uri: Shown = Field(description=URI)
    name: str = Field(description=NAME)
    status: VideoStatus
    model_id: str
    duration: Seconds | None
    modalities: str
    error: Shown | None
    created_at: UtcDatetime
    updated_at: UtcDatetime

    @field_validator("name", mode="before")
    @classmethod
    def _named(cls, value: str | None, info: ValidationInfo) -> str:
        return display_name(value, str(info.data.get("uri", "")))  # rows indexed before names were recorded


class VideoDetail(VideoInfo):
    original_name: str = Field(
        description="The name exactly as it was sent (an upload) or found (a file's name), for export: `name` is "
        "it with its control and bidirectional characters written out. Not for display: it may read as another."
    )
    clips: list[ClipInfo]


class VideoPage(Model):
    total: int
    limit: int
    offset: int
    items: list[VideoInfo]


class ClipEmbeddings(Model):
    clip_id: int
    start: Seconds
    duration: Seconds
    audio: list[list[float]] | None = Field(description="(T, D) L2-normalised audio global tokens; null if absent.")
    visual: list[list[float]] | None = Field(description="(T, D) L2-normalised visual global tokens; null if absent.")


class EmbeddingsResponse(Model):
    video_id: int
    model_id: str
    index_version: str
    frames_per_clip: int
    dim: int
    clips_total: int = Field(description="The video's clips; `clips` holds those from `offset` on (a page).")
    offset: int
    clips: list[ClipEmbeddings]


class DeleteResponse(Model):
    video_id: int
    deleted: bool = Field(description="False when the video was already deleted.")
    index_version: str | None


# ------------------------------------------------------------------------------------ jobs
class IndexPathsRequest(Model):
    paths: list[str] = Field(
        min_length=1, max_length=10000, description="Media files, or folders (walked), under the media roots."
    )


class IndexRoots(Model):
    media_roots: list[str] = Field(description="Folders POST /index may read files from (none: uploads only).")
    api_key_required: bool = Field(description="Whether POST /index and DELETE need the X-API-Key header.")


class JobAccepted(Model):
    job_id: str
    files: int
    mode: Literal["in-process", "broker"]


class JobFileInfo(Model):
    path: Shown | None = Field(
        description="The file on the server, as given by path or found in a folder given; null for an upload "
        "(where the server keeps it is its own business)."
    )
    name: Shown = Field(
        description="The file as its user named it: an upload's file name as it was sent, else its path (control "
        "and bidirectional characters written as `\\uXXXX`)."
    )
    uploaded: bool = Field(description="Whether the file was sent as an upload (else given by its path).")
    state: FileState = Field(description="What became of the file: queued, then indexed, skipped or failed.")
    error: Shown | None = Field(description="Why it failed (an upload named as it was sent, never by a server path).")


class JobSummary(Model):
    id: str
    state: JobState = Field(
        description="queued, running, then final: `done` when every file is settled and at least one was "
        "indexed or skipped (`partial` says whether some failed), `failed` when every file failed or the job "
        "could not run (the queue unreachable, the server stopped first)."
    )
    partial: bool = Field(
        description="True for a `done` job with failed files (`failed` > 0): finished, but not every file was "
        "indexed; `failures` lists them."
    )
    total: int
    done: int = Field(description="Files indexed.")
    failed: int = Field(description="Files that failed (each with its error in `failures`).")
    skipped: int = Field(description="Files already indexed with this model (same content).")
    errors: dict[Shown, Shown] = Field(
        description="The error of each failed file by its `name` (two uploads sent with one name: one entry; "
        "`failures` lists every file)."
    )
    failures: list[JobFileInfo] = Field(description="Each failed file: its name as sent, its path and error.")
    blocked: str | None = Field(
        None,
        description="Why a queued or running job is not progressing now (the server's disk is full: the catalog "
        "can record nothing; the job goes on once space is freed); null when nothing stops it.",
    )
    created_at: UtcDatetime
    updated_at: UtcDatetime


class JobInfo(JobSummary):
    files: list[JobFileInfo]


class JobPage(Model):
    total: int
    limit: int
    offset: int
    items: list[JobSummary] = Field(description="Jobs, newest first.")


# ------------------------------------------------------------------------------------ system
class ModelInfo(Model):
    id: str = Field(description="First 16 hex digits of the checkpoint's sha256.")
    preset: str = Field(description="The preset the config matches (tiny, base), else custom.")
    path: str
    device: str
    embed_dim: int
    frames_per_clip: int
    image_size: int
    grid_size: int


class ShardInfo(Model):
    shard: int
    version: str | None = Field(description="The shard's store version the loaded generation names (null: empty).")
    clips: int = Field(description="Live clips in the shard.")
    replicas: int = Field(description="Replicas meant to serve it (1 in process).")
    alive: int = Field(description="Replicas that answered a ping just now.")
    nodes: list[str] = Field(description="Where the live replicas run (cluster node ids; 'local' in process).")
    failovers: int = Field(0, description="Calls moved from a failed replica to another, since the API started.")
    unavailable: int = Field(0, description="Searches refused (503) for want of a live replica, since the start.")


class IndexInfo(Model):
    version: str | None = Field(description="The loaded version (a sharded index: its generation, gNNNNNN).")
    clips: int = Field(description="Live clips in the loaded version.")
    videos: int = Field(description="Indexed videos in the catalog.")
    shards: list[ShardInfo] = Field(default_factory=list, description="Each shard (one for an unsharded index).")


class HealthResponse(Model):
    status: Literal["ok", "degraded"]
    model: ModelInfo
    index: IndexInfo
    queue: Literal["in-process", "reachable", "unreachable"]
    database: Literal["ok", "unreachable"]
