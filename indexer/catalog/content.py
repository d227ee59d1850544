"""Which videos hold a content: the one query "the indexed videos of this hash with this model", which the job
records, the API's job views and the offline pipeline's repairs all ask."""

from __future__ import annotations

from sqlalchemy import Select, select

from indexer.catalog.tables import Video, VideoStatus


def indexed_videos_of(sha: str, model_id: str) -> Select[Video]:
    """The query of the indexed videos of this content (its sha256) with this model."""
    return select(Video).where(Video.sha256 == sha, Video.model_id == model_id, Video.status == VideoStatus.INDEXED)
