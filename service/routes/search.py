"""Search and localization routes. Every one runs its model and search work in a worker thread while
holding an inference slot (503 with Retry-After when none is free)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Literal, TypeVar

import anyio
from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import Response

from indexer.cluster.corpus import CorpusVersion
from model import Strategy
from model.network import Modality
from service import localization, queries
from service.deps import EngineDep, VersionDep
from service.engine import Engine
from service.errors import InvalidInput, responses
from service.schemas import MAX_ID, MAX_MOMENTS, LocalizeMethod, LocalizeResponse, SearchResponse, TokensQuery

router = APIRouter(tags=["search"])
T = TypeVar("T")
MAX_SECONDS = 1e6

MEDIA_ERRORS = responses(400, 404, 413, 415, 503)
TopK = Annotated[int, Form(ge=1, le=100, description="How many videos to return.")]
StrategyForm = Annotated[Strategy, Form(description="How aligned frames are scored from per-frame tokens.")]
MomentsForm = Annotated[int, Form(ge=1, le=MAX_MOMENTS, description="Non-overlapping moments per video, at most.")]
VideoIdForm = Annotated[
    int | None,
    Form(ge=1, le=MAX_ID, description="An indexed video: its stored track is the query (its first 180 s at most)."),
]
AUDIO_TIME = "Where in the audio: the 4.16-s segment centred nearest this time is used."
Seconds = Annotated[float, Form(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
# What a search by `video_id` uses without an `end` (stored_query): the page's "To (s)" placeholder says the same.
END_DEFAULT = "default: to the video's end, the longest query (180 s by default) at most"
StartForm = Annotated[
    float, Form(ge=0, le=MAX_SECONDS, allow_inf_nan=False, description="With `video_id`: where the query starts, s.")
]
EndForm = Annotated[
    float | None,
    Form(
        ge=0,
        le=MAX_SECONDS,
        allow_inf_nan=False,
        description=f"With `video_id`: where it ends, s ({END_DEFAULT}; the answer's `query.truncated` says "
        "when the end was cut).",
    ),
]


async def run_inference(engine: Engine, work: Callable[[], T]) -> T:
    """Blocking work in a worker thread, holding one of the engine's inference slots."""
    async with engine.slots.hold():
        return await anyio.to_thread.run_sync(work)


def one_source(upload: UploadFile | None, video_id: int | None, names: tuple[str, str]) -> None:
    if (upload is None) == (video_id is None):
        raise InvalidInput(f"give exactly one of `{names[0]}` (an upload) and `{names[1]}` (an indexed video)")


@dataclass(frozen=True)
class MediaQuery:
    """The form fields both media searches share, but the upload."""

    video_id: int | None
    options: queries.SearchOptions
    start: float
    end: float | None


def media_query(
    video_id: VideoIdForm = None,
    top_k: TopK = 10,
    strategy: StrategyForm = "diagonal_mean",
    moments: MomentsForm = 3,
    start: StartForm = 0.0,
    end: EndForm = None,
) -> MediaQuery:
    options = queries.SearchOptions(top_k=top_k, strategy=strategy, moments=moments)
    return MediaQuery(video_id, options, start, end)


MediaQueryDep = Annotated[MediaQuery, Depends(media_query)]


# Each search's upload is a dependency of its own (its description differs), solved before the shared fields: a
# request's validation errors keep the form's order (file first).
def audio_upload(
    file: Annotated[UploadFile | None, File(description="Audio, or a video whose audio track is used.")] = None,
) -> UploadFile | None:
    return file


def video_upload(
    file: Annotated[UploadFile | None, File(description="A video: its frames are the query.")] = None,
) -> UploadFile | None:
    return file


AudioUpload = Annotated[UploadFile | None, Depends(audio_upload)]
VideoUpload = Annotated[UploadFile | None, Depends(video_upload)]


async def media_search(
    engine: Engine, version: CorpusVersion | None, modality: Modality, file: UploadFile | None, query: MediaQuery
) -> SearchResponse:
    """Both media searches: `modality` from an upload or from part of an indexed video, searched in the other one."""
    one_source(file, query.video_id, ("file", "video_id"))
    part = queries.time_range(query.video_id, query.start, query.end)
    work = partial(
        queries.search_media,
        engine,
        version,
        modality=modality,
        upload=file,
        video_id=query.video_id,
        options=query.options,
        part=part,
    )
    return await run_inference(engine, work)


@router.post("/search/audio-to-video", response_model=SearchResponse, responses=MEDIA_ERRORS)
async def audio_to_video(
    engine: EngineDep,
    version: VersionDep,
    file: AudioUpload,
    query: MediaQueryDep,
) -> SearchResponse:
    """Videos whose pictures fit a sound: the query's audio tokens against the stored visual tokens.

    A query of 1 to 180 s gives one token per 0.64 s, every one used; it is slid over each video's
    whole track, one frame at a time. Each video comes with up to `moments` non-overlapping moments, placed
    where the video's own soundtrack sounds like the query and sorted by score; videos are ranked by their
    first moment's score.
    """
    return await media_search(engine, version, "audio", file, query)


@router.post("/search/video-to-audio", response_model=SearchResponse, responses=MEDIA_ERRORS)
async def video_to_audio(
    engine: EngineDep,
    version: VersionDep,
    file: VideoUpload,
    query: MediaQueryDep,
) -> SearchResponse:
    """Videos whose sound fits pictures: the query's visual tokens (every frame: one per 0.64 s past
    10 s, up to 60 s) slid over every video's stored audio track; moments as for audio-to-video,
    placed on the videos' pictures."""
    return await media_search(engine, version, "visual", file, query)


@router.post("/search/tokens", response_model=SearchResponse, responses=responses(400, 413, 503))
async def search_tokens(engine: EngineDep, version: VersionDep, body: TokensQuery) -> SearchResponse:
    """Search with raw per-frame global tokens (T_q, D); they are L2-normalised first."""
    return await run_inference(engine, partial(queries.search_tokens, engine, version, body))


PNG = {
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
    "description": "JSON map, or with ?format=png the heat map over the whole frame at the source's resolution "
    "(at most 720 px high), with a colour legend (the map's min and max cosine) over its bottom strip",
}
METHOD = (
    "head: the checkpoint's learned localization head (the default when it has one); paper: the cosine of the "
    "audio global token with each final visual patch token (the default without a head)."
)


@router.post("/localize", response_model=LocalizeResponse, responses={200: PNG, **MEDIA_ERRORS})
async def localize(
    engine: EngineDep,
    version: VersionDep,
    image: Annotated[UploadFile | None, File(description="An image, or a video (its frame at `time`).")] = None,
    video_id: Annotated[int | None, Form(ge=1, le=MAX_ID, description="An indexed video: its frame at `time`.")] = None,
    time: Seconds = 0.0,
    audio: Annotated[UploadFile | None, File(description="The sound: any file with an audio track.")] = None,
    audio_video_id: Annotated[int | None, Form(ge=1, le=MAX_ID, description="An indexed video's stored audio.")] = None,
    audio_time: Annotated[float, Form(ge=0, le=MAX_SECONDS, allow_inf_nan=False, description=AUDIO_TIME)] = 0.0,
    method: Annotated[LocalizeMethod | None, Form(description=METHOD)] = None,
    output_format: Annotated[Literal["json", "png"], Query(alias="format")] = "json",
) -> LocalizeResponse | Response:
    """Where in a frame a sound comes from, over the whole frame. The map is a cosine in [-1, 1] of the
    frame's audio global token with one embedding per visual patch: the checkpoint's localization head's
    (`method=head`, the default when it has one) or the final patch tokens (`method=paper`). The frame is
    resized so its short side is the model's image size; square crops cover it (`crops`, each with its
    G x G grid), their maps are upsampled (bilinear) and averaged where they overlap (`map`). The answer
    says which method ran, the value range and the peak (in `map` and in source pixels)."""
    one_source(image, video_id, ("image", "video_id"))
    one_source(audio, audio_video_id, ("audio", "audio_video_id"))
    inputs = localization.LocalizeInputs(image, video_id, time, audio, audio_video_id, audio_time, method)
    found = await run_inference(engine, partial(localization.localize, engine, version, inputs, output_format == "png"))
    return Response(found, media_type="image/png") if isinstance(found, bytes) else found
