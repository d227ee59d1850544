"""Blocking work behind the search routes (run in a worker thread): queries from uploads, stored tokens
(`service.stored`) or raw tokens, the retrieval core, and the answers.

Shapes: query tokens (T_q, D) L2-normalised float32, one per 0.64-s frame, up to the longest query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.datastructures import UploadFile

from indexer.catalog.queries import indexed_videos_of_clips
from indexer.cluster.corpus import CorpusVersion
from indexer.cluster.scatter import SearchRequest
from indexer.search.moments import Moment as CoreMoment
from model.network import Modality
from model.similarity import Strategy
from service import inference
from service.engine import Engine
from service.errors import InvalidInput
from service.inference import QueryTokens, ms
from service.schemas import Moment, QueryInfo, SearchResponse, Timings, TokensQuery, VideoResult
from service.stored import WHOLE_TRACK, TimeRange, stored_query
from service.uploads import saved_upload

SPARE_HITS = 8  # tracks asked beyond top_k, for videos the catalog drops (pending, failed, deleted)


def time_range(video_id: int | None, start: float, end: float | None) -> TimeRange:
    """The part of an indexed video a request asks for (422 for a range without a video, or ending first)."""
    if (start or end is not None) and video_id is None:
        raise InvalidInput("`start` and `end` choose part of an indexed video: give them with `video_id`")
    if end is not None and end <= start:
        raise InvalidInput(f"end ({end}) must come after start ({start})")
    return TimeRange(start, end)


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
        stage=engine.config.search,
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
    part: TimeRange = WHOLE_TRACK,
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
