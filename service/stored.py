"""An indexed video's stored tokens as a query (for the searches by `video_id` and the localization of an
indexed video's audio): its clips, its rows in the loaded index version, the frames of part of its track.

Shapes: query tokens (T_q, D) L2-normalised float32, one per 0.64-s frame, up to the longest query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from indexer.catalog.queries import Sessions, video_clips
from indexer.catalog.tables import VideoStatus
from indexer.cluster.corpus import CorpusVersion, version_part
from indexer.store.version import StoreVersion
from model.network import Modality
from service.engine import Engine
from service.errors import InvalidInput, NotFound
from service.inference import QueryTokens
from service.media import check_catalog_file


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


WHOLE_TRACK = TimeRange()


def stored_query(
    engine: Engine, version: CorpusVersion | None, video_id: int, modality: Modality, part: TimeRange = WHOLE_TRACK
) -> QueryTokens:
    """An indexed video's track of `modality` (the frames of `part` of it: one per 0.64 s, from the first at or
    after `start` to the last before `end`) as query tokens, cut to the longest query."""
    first = indexed_clips(engine.sessions, video_id)[0][0]
    check_catalog_file(engine.sessions, video_id)  # its media gone or replaced: refused as the media is
    stored = stored_row(version, first, modality, video_id)  # 404 / 422 as for any stored token
    store, track = stored.version, int(stored.version.tracks.track_of_row[stored.row])  # the version holding it
    frames = int(store.tracks.length[track])
    low, high = 0, frames  # the track's frames [low, high) inside `part`
    if part != WHOLE_TRACK:
        end = part.end if part.end is not None else frames * store.frame_s
        if end - part.start < engine.prep.min_query_s:
            raise InvalidInput(f"the time range {part.start:.3f}-{end:.3f} s is under {engine.prep.min_query_s:.1f} s")
        times = store.frame_s * np.arange(frames)  # each frame's time in the video
        inside = np.flatnonzero((times >= part.start - 1e-6) & (times < end - 1e-6))
        if len(inside) == 0:
            raise InvalidInput(f"video {video_id} has no frame between {part.start:.3f} and {end:.3f} s")
        low, high = int(inside[0]), int(inside[-1]) + 1
    longest = engine.prep.max_query_frames(store.frames)  # the store matches the model: the same frame_s
    tokens = store.track_frames(modality, track, low, min(high, low + longest))  # read only what is used
    return QueryTokens(tokens, high - low > longest, 0.0, 0.0)
