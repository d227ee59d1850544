"""The catalog on SQLite and on the real PostgreSQL: migrations, relations, cascades."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from sqlalchemy import select

from indexer.catalog.tables import Clip, IndexJob, JobState, Video, VideoStatus, migrate, open_catalog


@pytest.mark.integration
def test_catalog_round_trip(catalog_url: str) -> None:
    sessions = open_catalog(catalog_url)
    migrate(catalog_url)  # idempotent
    with sessions() as session:
        video = Video(
            uri="file:///media/a.mp4", sha256="ab" * 32, model_id="m1", duration=25.0, modalities="audio,visual"
        )
        video.clips = [
            Clip(id=7, start=0.0, duration=10.24, modalities="audio,visual"),
            Clip(id=8, start=10.24, duration=10.24, modalities="audio"),
        ]
        session.add_all([video, IndexJob(id="job-1", total=3, errors={"b.mp4": "unreadable"})])
        session.commit()
    with sessions() as session:
        stored = session.scalars(select(Video).where(Video.sha256 == "ab" * 32)).one()
        assert stored.status == VideoStatus.PENDING and [c.id for c in stored.clips] == [7, 8]
        job = session.get(IndexJob, "job-1")
        assert job.state == JobState.QUEUED and job.errors == {"b.mp4": "unreadable"}
        session.delete(stored)
        session.commit()
        assert session.scalars(select(Clip)).all() == []  # clips go with their video


@pytest.mark.integration
def test_processes_starting_together_migrate_once(catalog_url: str) -> None:
    """Four processes opening a fresh catalog at once (an API and workers starting together) all succeed."""
    context = mp.get_context("spawn")
    with context.Pool(4) as pool:
        assert pool.map(_open_and_count, [catalog_url] * 4, chunksize=1) == [0, 0, 0, 0]


def _open_and_count(url: str) -> int:
    with open_catalog(url)() as session:
        return len(session.scalars(select(Video)).all())


@pytest.mark.integration
def test_videos_of_clips_answer_indexed_videos_only(catalog_url: str) -> None:
    """The search's one catalog query (track hits name their first clip) gives the same on both databases."""
    from indexer.catalog.queries import VideoRef, indexed_videos_of_clips

    sessions = open_catalog(catalog_url)
    with sessions() as session:
        for n, status in enumerate(
            (VideoStatus.INDEXED, VideoStatus.PENDING, VideoStatus.DELETED, VideoStatus.INDEXED)
        ):
            video = Video(uri=f"/m/{n}.mp4", sha256=f"{n:064d}", model_id="m", duration=30.0 + n, status=status)
            video.clips = [Clip(id=10 * n + k, start=10.24 * k, duration=10.24, modalities="audio") for k in range(3)]
            session.add(video)
        session.commit()
        found = indexed_videos_of_clips(sessions, [0, 10, 20, 30, 31, 99])
        ids = {v.uri: v.id for v in session.scalars(select(Video))}
    assert found == {
        0: VideoRef(ids["/m/0.mp4"], "/m/0.mp4", 30.0, "0.mp4"),
        30: VideoRef(ids["/m/3.mp4"], "/m/3.mp4", 33.0, "3.mp4"),
        31: VideoRef(ids["/m/3.mp4"], "/m/3.mp4", 33.0, "3.mp4"),
    }
