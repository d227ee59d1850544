"""The catalog on SQLite and on the real PostgreSQL: migrations, relations, cascades."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from sqlalchemy import select

from indexer.catalog import Clip, IndexJob, JobState, Video, VideoStatus, migrate, open_catalog


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
