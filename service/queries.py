"""Blocking work behind the search and localization routes (run in a worker thread): queries from
uploads, stored tokens or raw tokens, the retrieval core, and the answers.

Shapes: query tokens (T_q, D) L2-normalised float32, one per 0.64-s frame, up to the longest query.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from starlette.datastructures import UploadFile

from indexer.catalog.queries import Sessions, indexed_videos_of_clips, video_clips
from indexer.catalog.tables import VideoStatus
from indexer.cluster.corpus import CorpusVersion, version_part
from indexer.cluster.scatter import SearchRequest
from indexer.search.moments import Moment as CoreMoment
from indexer.store.version import StoreVersion
from model.features import Picture, checked_duration, load_picture
from model.localization import VALUE_RANGE, LocalizationHead
from model.network import Modality
from model.probe import probe
from model.similarity import Strategy
from service import inference
from service.engine import Engine
from service.errors import InvalidInput, NotFound
from service.inference import QueryTokens, ms
from service.media import TIME_SLACK_S, check_catalog_file, named_errors, open_catalog_file, video_time
from service.schemas import (
    Crop,
    LocalizeMethod,
    LocalizeResponse,
    LocalizeTimings,
    Moment,
    Peak,
    QueryInfo,
    SearchResponse,
    Timings,
    TokensQuery,
    ValueRange,
    VideoResult,
)
from service.uploads import saved_upload

SPARE_HITS = 8  # tracks asked beyond top_k, for videos the catalog drops (pending, failed, deleted)


def indexed_clips(sessions: Sessions, video_id: int) -> list[tuple[int, float, float]]:
    """An indexed video's clips as (clip id, start, duration), by start time; 404 unless the video is indexed
    (with clips)."""
    found = video_clips(sessions, video_id)
    if found is None or found.status != VideoStatus.INDEXED or not found.clips:
        state = "unknown" if found is None else found.status.value
        raise NotFound(f"no indexed video {video_id} ({state})")
    return list(found.clips)


class StoredRow(NamedTuple):
    """Where a clip's tokens are: the store version holding it (its video's shard's) and its row there."""

    version: StoreVersion
    row: int


def stored_row(version: CorpusVersion | None, clip_id: int, modality: str, video_id: int) -> StoredRow:
    """The store row of a clip (in its video's shard); 404 when it is not in the version, 422 without the modality."""
    part = version_part(version, video_id)
    if part is None or len(rows := part.rows_of([clip_id])) == 0:
        raise NotFound(f"video {video_id} is not in the loaded index version")
    if not part.present[modality][rows[0]]:
        raise InvalidInput(f"video {video_id} has no {modality} track")
    return StoredRow(part, int(rows[0]))


def stored_tokens(version: CorpusVersion | None, clip_id: int, modality: str, video_id: int) -> np.ndarray:
    """The stored tokens (T, D) of a clip; 404 when it is not in the version, 422 without the modality."""
    part, row = stored_row(version, clip_id, modality, video_id)
    return part.gather(modality, np.array([row]))[0]


@dataclass(frozen=True)
class TimeRange:
    """Part of an indexed video used as a query, seconds; end None: to the end of its track."""

    start: float = 0.0
    end: float | None = None


def time_range(video_id: int | None, start: float, end: float | None) -> TimeRange:
    """The part of an indexed video a request asks for (422 for a range without a video, or ending first)."""
    if (start or end is not None) and video_id is None:
        raise InvalidInput("`start` and `end` choose part of an indexed video: give them with `video_id`")
    if end is not None and end <= start:
        raise InvalidInput(f"end ({end}) must come after start ({start})")
    return TimeRange(start, end)


def stored_query(
    engine: Engine, version: CorpusVersion | None, video_id: int, modality: Modality, part: TimeRange = TimeRange()
) -> QueryTokens:
    """An indexed video's track of `modality` (the frames of `part` of it: one per 0.64 s, from the first at or
    after `start` to the last before `end`) as query tokens, cut to the longest query."""
    first = indexed_clips(engine.sessions, video_id)[0][0]
    check_catalog_file(engine.sessions, video_id)  # its media gone or replaced: refused as the media is
    stored = stored_row(version, first, modality, video_id)  # 404 / 422 as for any stored token
    shard, track = stored.version, int(stored.version.tracks.track_of_row[stored.row])  # its shard's
    frames = int(shard.tracks.length[track])
    low, high = 0, frames  # the track's frames [low, high) inside `part`
    if part != TimeRange():
        end = part.end if part.end is not None else frames * shard.frame_s
        if end - part.start < engine.prep.min_query_s:
            raise InvalidInput(f"the time range {part.start:.3f}-{end:.3f} s is under {engine.prep.min_query_s:.1f} s")
        times = shard.frame_s * np.arange(frames)  # each frame's time in the video
        inside = np.flatnonzero((times >= part.start - 1e-6) & (times < end - 1e-6))
        if len(inside) == 0:
            raise InvalidInput(f"video {video_id} has no frame between {part.start:.3f} and {end:.3f} s")
        low, high = int(inside[0]), int(inside[-1]) + 1
    longest = engine.prep.max_query_frames(shard.frames)  # the store matches the model: the same frame_s
    tokens = shard.track_frames(modality, track, low, min(high, low + longest))  # read only what is used
    return QueryTokens(tokens, high - low > longest, 0.0, 0.0)


@dataclass(frozen=True)
class SearchOptions:
    top_k: int
    strategy: Strategy
    moments: int


def _moment(moment: CoreMoment, duration: float | None) -> Moment:
    end = moment.end if duration is None else min(moment.end, round(duration, 3))
    return Moment(
        start=moment.start, end=end, score=moment.score, match=moment.match, frame_scores=list(moment.frame_scores)
    )


def _results(
    engine: Engine,
    version: CorpusVersion | None,
    tokens: np.ndarray,
    *,
    target: Modality,
    options: SearchOptions,
    modality: Modality | None,
) -> tuple[CorpusVersion | None, list[VideoResult]]:
    """The retrieval core's tracks, then one catalog query for their videos (indexed ones only); and the version
    searched (the live one when `version` was pruned under the request: `Engine.search`)."""
    if version is None:
        return None, []
    request = SearchRequest(
        target=target,
        k=options.top_k + SPARE_HITS,
        strategy=options.strategy,
        moments=options.moments,
        moment_from=modality,
    )
    version, hits = engine.search(version, tokens, request)  # in process, or scattered over the shards
    videos = indexed_videos_of_clips(engine.sessions, [h.clip_id for h in hits])
    found = [(h, videos[h.clip_id]) for h in hits if h.clip_id in videos][: options.top_k]
    return version, [
        VideoResult(
            video_id=video.id,
            uri=video.uri,
            name=video.name,
            score=hit.score,
            moments=[_moment(m, video.duration) for m in hit.moments],
        )
        for hit, video in found
    ]


def answer(
    engine: Engine,
    version: CorpusVersion | None,
    query: QueryTokens,
    info: QueryInfo,
    *,
    target: Modality,
    options: SearchOptions,
    started: float,
    modality: Modality | None,
) -> SearchResponse:
    """`modality`: the query tokens' own (None: unknown), where the query's moments are looked for."""
    searching = time.perf_counter()
    version, results = _results(engine, version, query.tokens, target=target, options=options, modality=modality)
    search_ms = ms(time.perf_counter() - searching)
    timings = Timings(
        decode_ms=query.decode_ms,
        encode_ms=query.encode_ms,
        search_ms=search_ms,
        total_ms=ms(time.perf_counter() - started),
    )
    return SearchResponse(
        target=target,
        strategy=options.strategy,
        index_version=version.name if version else None,
        query=info,
        results=results,
        timings=timings,
    )


def search_media(
    engine: Engine,
    version: CorpusVersion | None,
    *,
    modality: Modality,
    upload: UploadFile | None,
    video_id: int | None,
    options: SearchOptions,
    part: TimeRange = TimeRange(),
) -> SearchResponse:
    """Query `modality` ("audio" or "visual") from an upload or an indexed video (`part` of it), searched in the
    other one."""
    started = time.perf_counter()
    if upload is not None:
        with saved_upload(upload) as path:
            query = file_query(engine, path, modality)
        info = QueryInfo(source="upload", frames=len(query.tokens), truncated=query.truncated)
    else:
        assert video_id is not None
        query = stored_query(engine, version, video_id, modality, part)
        info = QueryInfo(source="video", video_id=video_id, frames=len(query.tokens), truncated=query.truncated)
    target: Modality = "visual" if modality == "audio" else "audio"
    return answer(engine, version, query, info, target=target, options=options, started=started, modality=modality)


def file_query(engine: Engine, path: Path, modality: Modality) -> QueryTokens:
    """A media file's query tokens of `modality` (its audio, or its pictures)."""
    run = inference.audio_query if modality == "audio" else inference.video_query
    return run(engine.model, path, engine.prep)


def search_file(
    engine: Engine, version: CorpusVersion | None, path: Path, *, modality: Modality, options: SearchOptions
) -> SearchResponse:
    """A local media file as the query, searched as an upload is (the command line's `cavsync search FILE`)."""
    started = time.perf_counter()
    query = file_query(engine, path, modality)
    info = QueryInfo(source="file", frames=len(query.tokens), truncated=query.truncated)
    target: Modality = "visual" if modality == "audio" else "audio"
    return answer(engine, version, query, info, target=target, options=options, started=started, modality=modality)


def token_matrix(rows: list[list[float]], dim: int) -> np.ndarray:
    """JSON rows -> L2-normalised (T_q, D) float32; 422 for ragged rows, a wrong D, overflow or a zero row."""
    lengths = sorted({len(r) for r in rows})
    if lengths != [dim]:
        raise InvalidInput(f"tokens must be (T_q, {dim}): every row {dim} floats; got rows of {lengths} floats")
    tokens = np.asarray(rows, dtype=np.float64)
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(tokens, axis=1, keepdims=True)
    if not np.isfinite(norms).all() or (norms == 0).any():
        raise InvalidInput("every token row must have a finite, non-zero norm")
    return (tokens / norms).astype(np.float32)


def search_tokens(engine: Engine, version: CorpusVersion | None, body: TokensQuery) -> SearchResponse:
    started = time.perf_counter()
    tokens = token_matrix(body.tokens, engine.model.config.embed_dim)
    query = QueryTokens(tokens, False, 0.0, 0.0)
    info = QueryInfo(source="tokens", frames=len(tokens), truncated=False)
    options = SearchOptions(top_k=body.top_k, strategy=body.strategy, moments=body.moments)
    return answer(
        engine, version, query, info, target=body.target, options=options, started=started, modality=body.modality
    )


# ------------------------------------------------------------------------------------ localization
def frame_of(engine: Engine, path: Path, at: float, uploaded: bool = False) -> tuple[Picture, float]:
    """The whole picture of an image (time ignored) or of a video at `at` s, and the time it was read at
    (`video_time`: the last frame's for a time past its start). An `uploaded` video longer than the duration
    limit is refused, as for every other upload."""
    info = probe(path, engine.prep.timeout_s, engine.prep.limits)
    if uploaded:
        checked_duration(info, engine.prep)
    at = video_time(at, info)
    return load_picture(path, engine.model.config, engine.prep, at=at), at


def indexed_frame(engine: Engine, video_id: int, at: float) -> tuple[Picture, float]:
    """An indexed video's picture at `at` s, read from its file opened as the indexed one (404 gone, 409
    replaced; see `service.media`)."""
    entry, opened = open_catalog_file(engine.sessions, video_id, indexed=True)
    try:
        with named_errors(opened.fd, entry.name) as path:
            return frame_of(engine, Path(path), at)
    finally:
        os.close(opened.fd)


def uploaded_audio_token(engine: Engine, upload: UploadFile, at: float) -> tuple[np.ndarray, float, float]:
    """(D,) normalised audio token of the uploaded audio's segment at `at` s, its centre, the encode ms."""
    with saved_upload(upload) as path:
        try:
            segment, centre = inference.audio_segment(engine.model, path, at, engine.prep)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
    encoding = time.perf_counter()
    token = inference.global_tokens(engine.model, "audio", segment)[0]
    return token, centre, ms(time.perf_counter() - encoding)


def stored_audio_token(
    engine: Engine, version: CorpusVersion | None, video_id: int, at: float
) -> tuple[np.ndarray, float]:
    """(D,) stored audio token of an indexed video at `at` s (its clip's segment nearest `at`), its centre."""
    clips = indexed_clips(engine.sessions, video_id)
    check_catalog_file(engine.sessions, video_id)
    end = max(start + length for _, start, length in clips)
    if at > end + TIME_SLACK_S:
        raise InvalidInput(f"audio_time {at:.2f} s is past the end of video {video_id} ({end:.2f} s)")
    clip_id, start, _ = [c for c in clips if c[1] <= at][-1]
    frames = engine.model.config.frames_per_clip
    step = engine.prep.clip_s / frames
    index = min(frames - 1, round((at - start) / step))
    return stored_tokens(version, clip_id, "audio", video_id)[index], start + index * step


@dataclass(frozen=True)
class LocalizeInputs:
    image: UploadFile | None
    video_id: int | None
    time: float
    audio: UploadFile | None
    audio_video_id: int | None
    audio_time: float
    method: LocalizeMethod | None = None  # None: the head when the checkpoint has one, else the paper's


def _rounded(values: torch.Tensor) -> list[list[float]]:
    return torch.round(values, decimals=5).tolist()


def localization_head(engine: Engine, method: LocalizeMethod | None) -> LocalizationHead | None:
    """The head a request asks for (the checkpoint's by default), or None for the paper's map."""
    if method == "head" and engine.head is None:
        raise InvalidInput(
            "this checkpoint has no localization head: ask for method=paper, or give it one with "
            "`cavsync train-localizer --into`"
        )
    return None if method == "paper" else engine.head


def localize(
    engine: Engine, version: CorpusVersion | None, inputs: LocalizeInputs, png: bool
) -> LocalizeResponse | bytes:
    """The localization map over a whole frame: JSON (map, crops with their grids, peak) or a PNG heat map."""
    started = time.perf_counter()
    head = localization_head(engine, inputs.method)
    if inputs.image is not None:
        with saved_upload(inputs.image) as path:
            picture, frame_time = frame_of(engine, path, inputs.time, uploaded=True)
    else:
        picture, frame_time = indexed_frame(engine, inputs.video_id, inputs.time)  # type: ignore[arg-type]  # no image: LocalizeInputs required video_id
    encode_ms = 0.0
    if inputs.audio is not None:
        token, audio_time, encode_ms = uploaded_audio_token(engine, inputs.audio, inputs.audio_time)
    else:
        token, audio_time = stored_audio_token(engine, version, inputs.audio_video_id, inputs.audio_time)  # type: ignore[arg-type]  # no audio: audio_video_id required
    mapping = time.perf_counter()
    found = inference.localize(engine.model, picture.frame, token, head)
    if png:
        return inference.heatmap_png(picture.display, found.found.values)
    done = time.perf_counter()
    timings = LocalizeTimings(
        decode_ms=ms(mapping - started) - encode_ms,
        encode_ms=encode_ms + ms(done - mapping),
        total_ms=ms(done - started),
    )
    return _localize_response(found, picture, frame_time, audio_time, timings)


def _localize_response(
    found: inference.Localization, picture: Picture, frame_time: float, audio_time: float, timings: LocalizeTimings
) -> LocalizeResponse:
    values, (x, y) = found.found.values, found.peak_xy
    map_h, map_w = values.shape
    width, height = picture.source_size
    crops = [
        Crop(x=c.x, y=c.y, size=c.size, grid=_rounded(g))
        for c, g in zip(found.found.crops, found.found.grids, strict=True)
    ]
    return LocalizeResponse(
        method=found.found.method,
        map=_rounded(values),
        map_width=map_w,
        map_height=map_h,
        frame_width=width,
        frame_height=height,
        value_range=ValueRange(min=float(values.min()), max=float(values.max()), scale=VALUE_RANGE),
        crops=crops,
        grid_size=found.found.grids.shape[-1],
        image_size=found.found.crops[0].size,
        peak=Peak(
            x=x,
            y=y,
            source_x=min(width - 1, int((x + 0.5) * width / map_w)),
            source_y=min(height - 1, int((y + 0.5) * height / map_h)),
            value=float(values[y, x]),
        ),
        frame_time=frame_time,
        audio_time=audio_time,
        timings=timings,
    )
