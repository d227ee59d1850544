"""The SQL catalog (SQLAlchemy 2): videos, their clips, index jobs and index versions.

SQLite file by default; any SQLAlchemy URL works (PostgreSQL in docker compose). The schema is
created and upgraded by Alembic (`indexer/catalog/migrations`); `open_catalog` runs the migrations.
"""

from __future__ import annotations

import enum
import fcntl
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import JSON, BigInteger, Enum, Float, ForeignKey, Integer, String, Text, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker, validates

from indexer.catalog.names import decode_original, encode_original, shown_name


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class VideoStatus(enum.StrEnum):
    PENDING = "pending"
    INDEXED = "indexed"
    FAILED = "failed"
    DELETED = "deleted"


class JobState(enum.StrEnum):
    """Where an index job is. `done` and `failed` are final: `done` once every file is settled and at least one
    was indexed or skipped (some may have failed: the job's `failed` count, `partial` in the API); `failed` when
    every file failed, or when the job could not run (the broker took no task, the server stopped first)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


FINAL_JOB_STATES = frozenset({JobState.DONE, JobState.FAILED})


class FileState(enum.StrEnum):
    """What became of one file of an index job; the last three are settled."""

    QUEUED = "queued"
    INDEXED = "indexed"
    SKIPPED = "skipped"
    FAILED = "failed"


SETTLED = frozenset({FileState.INDEXED, FileState.SKIPPED, FileState.FAILED})


class Video(Base):
    __tablename__ = "videos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uri: Mapped[str] = mapped_column(String(2048), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    model_id: Mapped[str] = mapped_column(String(128))
    duration: Mapped[float | None] = mapped_column(Float)
    modalities: Mapped[str] = mapped_column(String(32), default="")  # "audio,visual"
    status: Mapped[VideoStatus] = mapped_column(
        Enum(VideoStatus, native_enum=False, length=16), default=VideoStatus.PENDING, index=True
    )
    error: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(String(1024))  # shown: the name an upload was sent with, a file's name
    original_name: Mapped[str | None] = mapped_column(Text)  # that name percent-encoded, when `name` shows it escaped
    file_size: Mapped[int | None] = mapped_column(BigInteger)  # the file as hashed (FileIdentity)
    file_mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    updated_at: Mapped[datetime] = mapped_column(default=_now, onupdate=_now)
    clips: Mapped[list[Clip]] = relationship(
        back_populates="video", cascade="all, delete-orphan", order_by="Clip.start"
    )

    @validates("name")
    def _shown(self, _key: str, name: str | None) -> str | None:
        """A name set is stored as shown (`indexer.catalog.names.shown_name`), the original kept when that differs (the
        shown name set again keeps the original it shows)."""
        kept = self.original_name
        if name is None or kept is None or shown_name(decode_original(kept)) != name:
            self.original_name = encode_original(name)
        return None if name is None else shown_name(name)


class FileIdentity(NamedTuple):
    """What a file was when it was hashed: its size in bytes and its mtime in nanoseconds."""

    size: int
    mtime_ns: int


def recorded_identity(video: Video) -> FileIdentity | None:
    """A video's file identity as indexed; None for rows indexed before it was recorded."""
    if video.file_size is None or video.file_mtime_ns is None:
        return None
    return FileIdentity(video.file_size, video.file_mtime_ns)


class Clip(Base):
    __tablename__ = "clips"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # the token store's clip id
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    start: Mapped[float] = mapped_column(Float)
    duration: Mapped[float] = mapped_column(Float)
    modalities: Mapped[str] = mapped_column(String(32), default="")
    video: Mapped[Video] = relationship(back_populates="clips")


def new_video(
    uri: str,
    sha256: str,
    model_id: str,
    clips: list[tuple[float, float, str]],
    *,
    name: str | None = None,
    identity: tuple[int, int] | None = None,
) -> Video:
    """A pending video with its clips, given as (start, duration, "audio,visual"); `name` shown (default: the
    file's name), `identity` the file's (size, mtime_ns) when it was hashed (`indexer.catalog.tables.FileIdentity`)."""
    modalities = sorted({m for _, _, ms in clips for m in ms.split(",") if m})
    video = Video(
        uri=uri,
        sha256=sha256,
        model_id=model_id,
        modalities=",".join(modalities),
        duration=max(float(start + length) for start, length, _ in clips),
        name=name or Path(uri).name,  # stored as shown, the original kept (`Video._shown`)
        file_size=identity[0] if identity else None,
        file_mtime_ns=identity[1] if identity else None,
    )
    video.clips = [Clip(start=float(start), duration=float(length), modalities=ms) for start, length, ms in clips]
    return video


def display_name(name: str | None, uri: str) -> str:
    """What a video is called, safe to show (`indexer.catalog.names.shown_name`): its recorded name, else (rows indexed
    before names were) its file's name."""
    return shown_name(name or Path(uri).name)


def original_name(video: Video) -> str:
    """A video's name exactly as it was sent or found (for export; `display_name` is what is shown)."""
    if video.original_name is not None:
        return decode_original(video.original_name)
    return video.name or Path(video.uri).name  # as recorded (rows from before names were shown escaped: as sent)


class IndexJob(Base):
    __tablename__ = "index_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    state: Mapped[JobState] = mapped_column(Enum(JobState, native_enum=False, length=16), default=JobState.QUEUED)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)  # uri -> message
    created_at: Mapped[datetime] = mapped_column(default=_now)
    updated_at: Mapped[datetime] = mapped_column(default=_now, onupdate=_now)


class JobFile(Base):
    """One file of an index job and what became of it; written idempotently (a retried task rewrites it)."""

    __tablename__ = "job_files"

    job_id: Mapped[str] = mapped_column(ForeignKey("index_jobs.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(2048), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(1024))  # an upload's file name as sent, shown; None: by path
    state: Mapped[str] = mapped_column(String(16), default=FileState.QUEUED)  # a FileState value
    error: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(64))  # the task working on it (indexer.jobs.records)
    lease_until: Mapped[float | None] = mapped_column(Float)  # epoch seconds; past it the file counts as lost
    dispatches: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # times sent to run

    @validates("name")
    def _shown(self, _key: str, name: str | None) -> str | None:
        """A name set is stored as shown (`indexer.catalog.names.shown_name`); the video keeps the original."""
        return None if name is None else shown_name(name)


def make_engine(url: str) -> Engine:
    """An engine for any SQLAlchemy URL; SQLite gets foreign keys, WAL and a busy timeout."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: DBAPIConnection, _record: object) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.startswith("postgresql") else {}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)  # a dropped connection is replaced


CONNECT_TIMEOUT_S = 5  # a database that does not answer fails a request in seconds (a 503), never hangs it

MIGRATION_LOCK_ID = 0x6361_7673  # PostgreSQL advisory lock held while migrating ("cavs")


def migrate(url: str) -> None:
    """Bring the database at `url` to the newest schema with Alembic, one process at a time (processes
    starting together would each see an empty schema): a file lock beside a SQLite file, an advisory lock
    in PostgreSQL (taken in migrations/env.py)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    if path is None or path == ":memory:":
        command.upgrade(config, "head")
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.migrate.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        command.upgrade(config, "head")


def open_catalog(url: str) -> sessionmaker[Session]:
    """Migrate, then return a session factory."""
    migrate(url)
    return sessionmaker(make_engine(url), expire_on_commit=False)
