"""The service's catalog queries (indexer.catalog.queries) on SQLite and on the real PostgreSQL: plain values out,
None for what is not there."""

from __future__ import annotations

import dataclasses

import pytest

from indexer.catalog.queries import (
    ClipRow,
    Sessions,
    VideoClips,
    count_videos,
    record_file_identity,
    video_clips,
    video_detail,
    video_file,
    video_page,
    video_status,
)
from indexer.catalog.tables import Clip, FileIdentity, Video, VideoStatus, open_catalog

STATES = (VideoStatus.INDEXED, VideoStatus.PENDING, VideoStatus.DELETED, VideoStatus.INDEXED, VideoStatus.FAILED)


def _seed(sessions: Sessions) -> list[int]:
    """Five videos, one per STATES entry, each with two clips given out of start order; their ids in order."""
    with sessions() as session:
        videos = []
        for n, status in enumerate(STATES):
            video = Video(
                uri=f"/m/{n}.mp4",
                sha256=f"{n:064d}",
                model_id="m",
                duration=20.0 + n,
                status=status,
                modalities="audio,visual" if n % 2 == 0 else "audio",
                name="sent.mp4" if n == 0 else None,
                error="unreadable" if status == VideoStatus.FAILED else None,
            )
            video.clips = [
                Clip(id=10 * n + 1, start=10.24, duration=9.76 + n, modalities="audio"),
                Clip(id=10 * n, start=0.0, duration=10.24, modalities="audio"),
            ]
            videos.append(video)
        session.add_all(videos)
        session.commit()
        return [v.id for v in videos]


@pytest.mark.integration
def test_pages_counts_and_details(catalog_url: str) -> None:
    sessions = open_catalog(catalog_url)
    assert count_videos(sessions) == 0 and video_page(sessions, 10, 0) == (0, [])
    ids = _seed(sessions)
    assert count_videos(sessions) == 5 and count_videos(sessions, VideoStatus.INDEXED) == 2
    total, rows = video_page(sessions, 2, 1)
    assert total == 5 and [r.id for r in rows] == ids[1:3]  # by id, `limit` from `offset`
    total, rows = video_page(sessions, 10, 0, VideoStatus.INDEXED)
    assert total == 2 and [r.id for r in rows] == [ids[0], ids[3]]
    assert (rows[0].uri, rows[0].name, rows[0].status, rows[0].duration) == ("/m/0.mp4", "sent.mp4", "indexed", 20.0)
    assert rows[1].name is None  # as recorded: the API names it by its file
    assert video_page(sessions, 10, 5) == (5, [])

    detail = video_detail(sessions, ids[4])
    assert detail is not None and not isinstance(detail, Video)  # a plain value: nothing lazy-loads later
    assert (detail.status, detail.error, detail.modalities) == (VideoStatus.FAILED, "unreadable", "audio,visual")
    assert detail.clips == (ClipRow(40, 0.0, 10.24, "audio"), ClipRow(41, 10.24, 13.76, "audio"))  # by start
    assert detail.created_at is not None and detail.updated_at is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        detail.status = VideoStatus.DELETED  # type: ignore[misc]
    assert video_detail(sessions, max(ids) + 1) is None

    assert [video_status(sessions, i) for i in ids] == list(STATES)
    assert video_status(sessions, max(ids) + 1) is None
    assert video_clips(sessions, ids[2]) == VideoClips(VideoStatus.DELETED, ((20, 0.0, 10.24), (21, 10.24, 11.76)))
    assert video_clips(sessions, max(ids) + 1) is None


@pytest.mark.integration
def test_a_video_file_and_its_recorded_identity(catalog_url: str) -> None:
    sessions = open_catalog(catalog_url)
    ids = _seed(sessions)
    first, second = video_file(sessions, ids[0]), video_file(sessions, ids[1])
    assert first is not None and second is not None
    assert (first.video_id, first.uri, first.name, first.sha256) == (ids[0], "/m/0.mp4", "sent.mp4", "0" * 64)
    assert (first.duration, first.has_pictures, first.identity) == (20.0, True, None)  # not recorded yet
    assert (second.name, second.has_pictures, second.status) == ("1.mp4", False, VideoStatus.PENDING)
    record_file_identity(sessions, ids[0], FileIdentity(1234, 5_678_000_000_000_000_000))
    recorded = video_file(sessions, ids[0])
    assert recorded is not None and recorded.identity == FileIdentity(1234, 5_678_000_000_000_000_000)
    assert video_file(sessions, ids[1]) == second  # only that video's row
    assert video_file(sessions, max(ids) + 1) is None
