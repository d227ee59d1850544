"""The data dir's layout, spelled once: every command, the API and the workers find their folders through a
`DataDir` built by the composition root (`cavsync.settings.Settings.data`, `service.ServiceConfig.data`).

    <root>/index/        the token store (`TokenStore`; with shards > 1 a `ShardedStore`: `index/shard-NN/`, each a
                         `TokenStore`, and the generations naming their versions, `indexer.cluster.corpus`)
    <root>/pending/      finished index tasks' encodings waiting for the merge (`<sha256>.<model>.npz`)
    <root>/uploads/      the API's uploads, kept until their job file settles
    <root>/media/        managed copies of indexed uploads (`indexer.ingest.files`)
    <root>/posters/      the API's poster cache, a folder per video id
    <root>/catalog.db    the SQLite catalog, unless a database URL is given
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def catalog_url(data_dir: Path, database_url: str | None) -> str:
    """The catalog's SQLAlchemy URL: the given one, else SQLite at `<data_dir>/catalog.db`."""
    return database_url or f"sqlite:///{(data_dir / 'catalog.db').resolve()}"


INDEX_DIR, PENDING_DIR, UPLOADS_DIR, MEDIA_DIR, POSTERS_DIR = "index", "pending", "uploads", "media", "posters"


@dataclass(frozen=True)
class DataDir:
    """One data dir (`root`), when the catalog is not its SQLite file the catalog's URL, and how many shards its
    token store is split into (1: one `TokenStore`, the layout before shards)."""

    root: Path
    database_url: str | None = None
    shards: int = 1

    @property
    def index(self) -> Path:
        return self.root / INDEX_DIR

    @property
    def pending(self) -> Path:
        return self.root / PENDING_DIR

    @property
    def uploads(self) -> Path:
        return self.root / UPLOADS_DIR

    @property
    def media(self) -> Path:
        return self.root / MEDIA_DIR

    @property
    def posters(self) -> Path:
        return self.root / POSTERS_DIR

    @property
    def catalog_url(self) -> str:
        """The catalog's SQLAlchemy URL: the given one, else SQLite at `<root>/catalog.db`."""
        return catalog_url(self.root, self.database_url)
