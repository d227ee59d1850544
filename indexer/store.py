"""The token store: per-frame global tokens of every indexed clip, an exact copy for re-ranking and a
FAISS index per modality for candidates, in versioned directories swapped in atomically.

Layout under `root`:
    shards/<name>.{audio,visual}.npy  (rows, T, D) tokens, L2-normalised, fp16 by default; immutable
    shards/<name>.ids.npy             (rows,) int64 clip ids (the catalog's)
    versions/v000007/manifest.json    the shards in row order, deleted clip ids, FAISS factory, sizes
    versions/v000007/<modality>.faiss per-frame index, id = row * T + frame
    CURRENT                           the name of the live version (replaced with os.replace)

A version is never modified: adding writes a new shard and a new version whose FAISS indexes are
the previous ones plus the new vectors (no retraining), deleting writes a version with the clips'
vectors removed and their ids listed as deleted, `compact` rewrites one shard without them. A reader
opens CURRENT once and sees one complete version for as long as it holds it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

MODALITIES = ("audio", "visual")


class StoreError(RuntimeError):
    """The token store is missing, inconsistent, or was given tokens of the wrong shape."""


def default_factory(num_vectors: int) -> str:
    """Flat (exact) up to 200k frame vectors, then IVF with ~4 sqrt(n) lists; HNSW-free to keep deletes."""
    if num_vectors <= 200_000:
        return "IDMap2,Flat"
    lists = int(4 * np.sqrt(num_vectors))
    return f"IVF{lists},Flat"


@dataclass
class Manifest:
    version: int
    frames: int
    dim: int
    dtype: str
    model_id: str
    factory: str
    shards: list[dict] = field(default_factory=list)  # {"name": str, "rows": int}
    deleted: list[int] = field(default_factory=list)  # rows (positions in shard order) no longer live

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.shards)


class StoreVersion:
    """A read-only view of one version: memory-mapped tokens, clip ids and the FAISS indexes."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name
        folder = root / "versions" / name
        self.manifest = Manifest(**json.loads((folder / "manifest.json").read_text()))
        shards = self.manifest.shards
        self.tokens = {
            m: [np.load(root / "shards" / f"{s['name']}.{m}.npy", mmap_mode="r") for s in shards] for m in MODALITIES
        }
        ids = [np.load(root / "shards" / f"{s['name']}.ids.npy") for s in shards]
        self.clip_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        present = [np.load(root / "shards" / f"{s['name']}.present.npy") for s in shards]
        both = np.concatenate(present) if present else np.zeros((0, 2), dtype=bool)
        self.present = {m: both[:, k] for k, m in enumerate(MODALITIES)}  # the clip has this modality
        self.starts = np.cumsum([0] + [s["rows"] for s in shards])
        self.index = {m: faiss.read_index(str(folder / f"{m}.faiss")) for m in MODALITIES}
        self.live = np.ones(len(self.clip_ids), dtype=bool)
        self.live[np.asarray(self.manifest.deleted, dtype=np.int64)] = False

    @property
    def frames(self) -> int:
        return self.manifest.frames

    def __len__(self) -> int:
        return int(self.live.sum())

    def searchable(self, modality: str) -> np.ndarray:
        """Live rows that have `modality`."""
        return np.flatnonzero(self.live & self.present[modality])

    def rows_of(self, clip_ids: list[int] | np.ndarray) -> np.ndarray:
        """The live rows holding these clip ids."""
        return np.flatnonzero(np.isin(self.clip_ids, np.asarray(clip_ids, dtype=np.int64)) & self.live)

    def gather(self, modality: str, rows: np.ndarray) -> np.ndarray:
        """Tokens of the given rows, (len(rows), T, D) float32."""
        out = np.empty((len(rows), self.manifest.frames, self.manifest.dim), dtype=np.float32)
        shard_of = np.searchsorted(self.starts, rows, side="right") - 1
        for shard in np.unique(shard_of):
            picked = shard_of == shard
            out[picked] = self.tokens[modality][shard][rows[picked] - self.starts[shard]]
        return out


class TokenStore:
    """Writer and opener of a versioned token store at `root` (one writer at a time: a file lock)."""

    def __init__(self, root: str | os.PathLike[str], dtype: str = "float16", factory: str | None = None,
                 keep_versions: int = 3) -> None:  # fmt: skip
        self.root = Path(root)
        self.dtype, self.factory, self.keep_versions = dtype, factory, keep_versions
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        (self.root / "versions").mkdir(exist_ok=True)

    # ------------------------------------------------------------------------------------ reading
    def current_name(self) -> str | None:
        path = self.root / "CURRENT"
        return path.read_text().strip() if path.exists() else None

    def open(self) -> StoreVersion | None:
        """The live version, or None for an empty store."""
        name = self.current_name()
        return StoreVersion(self.root, name) if name else None

    # ------------------------------------------------------------------------------------ writing
    @contextmanager
    def _writer(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def add(self, clip_ids: np.ndarray, audio: np.ndarray, visual: np.ndarray, model_id: str,
            present: np.ndarray | None = None) -> str | None:  # fmt: skip
        """Append clips: clip_ids (n,), audio/visual (n, T, D) L2-normalised tokens; returns the new version.

        `present` (n, 2) bool says which of (audio, visual) each clip has (default: both); a missing
        modality's tokens are stored (zeros) but never indexed or searched. Idempotent: clip ids that
        are already live are left as they are (None when nothing is new).
        """
        clip_ids = np.asarray(clip_ids, dtype=np.int64)
        present = np.ones((len(clip_ids), 2), dtype=bool) if present is None else np.asarray(present, dtype=bool)
        if audio.shape != visual.shape or audio.ndim != 3 or len(clip_ids) != audio.shape[0]:
            raise StoreError(f"tokens must be (n, T, D) for both modalities and n ids; got {audio.shape}, "
                             f"{visual.shape}, {len(clip_ids)} ids")  # fmt: skip
        with self._writer():
            current = self.open()
            manifest = self._next_manifest(current, audio.shape[1], audio.shape[2], model_id)
            if current is not None:
                fresh = ~np.isin(clip_ids, current.clip_ids[current.live])
                if not fresh.any():
                    return None
                clip_ids, audio, visual, present = clip_ids[fresh], audio[fresh], visual[fresh], present[fresh]
            name = f"s{uuid.uuid4().hex[:12]}"
            for modality, tokens in (("audio", audio), ("visual", visual)):
                _atomic_save(self.root / "shards" / f"{name}.{modality}.npy", tokens.astype(self.dtype))
            _atomic_save(self.root / "shards" / f"{name}.ids.npy", clip_ids)
            _atomic_save(self.root / "shards" / f"{name}.present.npy", present)
            first_row = manifest.rows
            manifest.shards.append({"name": name, "rows": len(clip_ids)})
            indexes = {m: self._grown_index(current, m, manifest, tokens, first_row, present[:, k])
                       for k, (m, tokens) in enumerate((("audio", audio), ("visual", visual)))}  # fmt: skip
            return self._publish(manifest, indexes)

    def delete(self, clip_ids: list[int]) -> str | None:
        """Hide clips from every later search: their vectors leave the FAISS indexes. None if absent."""
        with self._writer():
            current = self.open()
            if current is None:
                return None
            rows = current.rows_of(clip_ids)
            if len(rows) == 0:
                return None
            manifest = Manifest(**{**asdict(current.manifest), "version": current.manifest.version + 1})
            manifest.deleted = sorted(set(manifest.deleted) | {int(r) for r in rows})
            frames = current.frames
            ids = (rows[:, None] * frames + np.arange(frames)[None, :]).ravel().astype(np.int64)
            indexes = {}
            for modality in MODALITIES:
                index = faiss.clone_index(current.index[modality])
                index.remove_ids(ids)
                indexes[modality] = index
            return self._publish(manifest, indexes)

    def compact(self) -> str | None:
        """Rewrite the live rows into one shard and rebuild the indexes without the deleted clips."""
        with self._writer():
            current = self.open()
            if current is None:
                return None
            rows = np.flatnonzero(current.live)
            manifest = Manifest(**{**asdict(current.manifest), "version": current.manifest.version + 1})
            manifest.shards, manifest.deleted = [], []
            name = f"s{uuid.uuid4().hex[:12]}"
            tokens = {m: current.gather(m, rows) for m in MODALITIES}
            for modality in MODALITIES:
                _atomic_save(self.root / "shards" / f"{name}.{modality}.npy", tokens[modality].astype(self.dtype))
            _atomic_save(self.root / "shards" / f"{name}.ids.npy", current.clip_ids[rows])
            present = np.stack([current.present[m][rows] for m in MODALITIES], axis=1)
            _atomic_save(self.root / "shards" / f"{name}.present.npy", present)
            manifest.shards.append({"name": name, "rows": len(rows)})
            manifest.factory = self.factory or default_factory(len(rows) * current.frames)
            indexes = {m: self._new_index(manifest, tokens[m], 0, present[:, k]) for k, m in enumerate(MODALITIES)}
            return self._publish(manifest, indexes)

    # ------------------------------------------------------------------------------------ helpers
    def _next_manifest(self, current: StoreVersion | None, frames: int, dim: int, model_id: str) -> Manifest:
        if current is None:
            return Manifest(1, frames, dim, self.dtype, model_id, self.factory or "IDMap2,Flat")
        m = current.manifest
        if (m.frames, m.dim) != (frames, dim) or m.model_id != model_id:
            raise StoreError(f"the store holds ({m.frames}, {m.dim}) tokens of model {m.model_id!r}; "
                             f"got ({frames}, {dim}) of {model_id!r}: use another index directory")  # fmt: skip
        return Manifest(**{**asdict(m), "version": m.version + 1})

    def _new_index(self, manifest: Manifest, tokens: np.ndarray, first_row: int, has: np.ndarray) -> faiss.Index:
        index = faiss.index_factory(manifest.dim, manifest.factory, faiss.METRIC_INNER_PRODUCT)
        vectors, ids = _frame_vectors(tokens, first_row, has)
        if not index.is_trained:
            index.train(vectors)
        index.add_with_ids(vectors, ids)
        return index

    def _grown_index(self, current: StoreVersion | None, modality: str, manifest: Manifest, tokens: np.ndarray,
                     first_row: int, has: np.ndarray) -> faiss.Index:  # fmt: skip
        if current is None:
            return self._new_index(manifest, tokens, first_row, has)
        index = faiss.clone_index(current.index[modality])
        index.add_with_ids(*_frame_vectors(tokens, first_row, has))
        return index

    def _publish(self, manifest: Manifest, indexes: dict[str, faiss.Index]) -> str:
        """Write the version folder under a temp name, rename it into place, then swap CURRENT."""
        name = f"v{manifest.version:06d}"
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root / "versions"))
        (staging / "manifest.json").write_text(json.dumps(asdict(manifest), indent=1))
        for modality, index in indexes.items():
            faiss.write_index(index, str(staging / f"{modality}.faiss"))
        target = self.root / "versions" / name
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        pointer = self.root / f".CURRENT.{os.getpid()}.tmp"
        pointer.write_text(name)
        os.replace(pointer, self.root / "CURRENT")
        self._prune(manifest.version)
        log.info("published token store version %s (%d rows)", name, manifest.rows)
        return name

    def _prune(self, live: int) -> None:
        for folder in (self.root / "versions").glob("v*"):
            if folder.name[1:].isdigit() and int(folder.name[1:]) <= live - self.keep_versions:
                shutil.rmtree(folder, ignore_errors=True)


def _frame_vectors(tokens: np.ndarray, first_row: int, has: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame vectors (float32) of the rows that have the modality, with ids row * T + frame."""
    _, frames, dim = tokens.shape
    kept = np.flatnonzero(has)
    ids = ((first_row + kept)[:, None] * frames + np.arange(frames)[None, :]).ravel().astype(np.int64)
    return np.ascontiguousarray(tokens[kept].reshape(-1, dim), dtype=np.float32), ids


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)
