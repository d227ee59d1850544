"""The token store: per-frame global tokens of every indexed clip, an exact copy for re-ranking and a
FAISS index per modality for candidates, in versioned directories swapped in atomically.

Layout under `root`:
    shards/<name>.{audio,visual}.npy  (rows, T, D) tokens, L2-normalised, fp16 by default; immutable
    shards/<name>.ids.npy             (rows,) int64 clip ids (the catalog's)
    shards/<name>.tracks.npy          (rows,) int64 track of each row (the catalog's video id); consecutive
                                      rows of one track are its clips in time order
    shards/<name>.valid.npy           (rows,) int16 frames of the row inside the media (T but in a last clip)
    versions/v000007/manifest.json    the shards in row order, deleted clip ids, FAISS factory, sizes
    versions/v000007/<modality>.faiss per-frame index, id = row * T + frame
    CURRENT                           the name of the live version (replaced with os.replace)

A track is a video's frames of one modality on one grid: frame k at k x frame_s seconds (frame_s,
the clip length / T, is in the manifest), the rows of its clips back to back, so the FAISS id
row * T + frame of a frame is also its place in the track (row - the track's first row) * T + frame.
Shards written before tracks existed read as one track per row.

A version is never modified: adding writes a new shard and a new version whose FAISS indexes are
the previous ones plus the new vectors (no retraining) until the store has grown REBUILD_GROWTH-fold
since its indexes were built, when they are rebuilt for the new size (index types re-chosen, IVF
retrained; amortised, as a growing array's copies), deleting writes a version with the clips' vectors
removed and their ids listed as deleted, `compact` rewrites one shard without them, re-chooses the
index types for the size and deletes the shards that no kept version uses. A reader opens CURRENT
once and sees one complete version for as long as it holds it.

Stores written before the clip sketches were removed (after 0.1.0) open as they are: their manifests'
sketch fields are dropped when read (`indexer.store.version.RETIRED_FIELDS`), their sketch files are never
read, and the next version written has neither (the old folders go when pruned).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.store import build
from indexer.store import segments as shards
from indexer.store.build import default_factory
from indexer.store.version import MODALITIES, Manifest, StoreVersion
from model.features import PreprocessConfig

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The token store is missing, inconsistent, or was given tokens of the wrong shape."""


OPEN_ATTEMPTS = 10  # a reader that lost the race with that many publishes in a row gives up
REBUILD_GROWTH = 4.0  # an add bringing the live clips to this multiple of the indexes' build size rebuilds them


class TokenStore:
    """Writer and opener of a versioned token store at `root` (one writer at a time: a file lock)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        dtype: str = "float16",
        factory: str | None = None,
        keep_versions: int = 3,
        rebuild_growth: float = REBUILD_GROWTH,
    ) -> None:
        self.root = Path(root)
        self.rebuild_growth = rebuild_growth  # math.inf: never rebuild on add (only `compact` does)
        self.dtype, self.factory, self.keep_versions = dtype, factory, keep_versions
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        (self.root / "versions").mkdir(exist_ok=True)

    # ------------------------------------------------------------------------------------ reading
    def current_name(self) -> str | None:
        path = self.root / "CURRENT"
        return path.read_text().strip() if path.exists() else None

    def open(self, gpu: bool = True, indexes: bool = True) -> StoreVersion | None:
        """The live version, or None for an empty store. Its per-frame FAISS indexes are read now (on the
        GPUs when faiss-gpu sees any), so that pruning the version later cannot take them from a reader; a
        caller that reads only ids and tokens passes indexes=False."""
        for _ in range(OPEN_ATTEMPTS):
            name = self.current_name()
            if not name:
                return None
            try:
                version = StoreVersion(self.root, name, gpu)
                if indexes:
                    version.index  # noqa: B018  (cached on first access)
                return version
            except (OSError, RuntimeError):  # faiss reports a missing file as RuntimeError
                if self.current_name() == name:
                    raise
                # a writer published and pruned this version while we read it: open the new one
        raise StoreError(f"{self.root}: the live version changed {OPEN_ATTEMPTS} times while being opened")

    # ------------------------------------------------------------------------------------ writing
    def add(
        self,
        clip_ids: np.ndarray,
        audio: np.ndarray,
        visual: np.ndarray,
        model_id: str,
        present: np.ndarray | None = None,
        *,
        tracks: np.ndarray | None = None,
        valid: np.ndarray | None = None,
        frame_s: float | None = None,
    ) -> str | None:
        """Append clips: clip_ids (n,), audio/visual (n, T, D) L2-normalised tokens; returns the new version.

        `present` (n, 2) bool says which of (audio, visual) each clip has (default: both); a missing
        modality's tokens are stored (zeros) but never indexed or searched. `tracks` (n,) int: the
        track (video) of each clip, a video's clips consecutive and in time order (default: each clip
        its own track); `valid` (n,) int: frames of each clip inside the media (default: all T);
        `frame_s`: seconds between frames (default: the preprocessing's clip length / T), fixed by the
        store's first add. Idempotent: clip ids that are already live are left as they are (None when
        nothing is new).
        """
        clip_ids = np.asarray(clip_ids, dtype=np.int64)
        present = np.ones((len(clip_ids), 2), dtype=bool) if present is None else np.asarray(present, dtype=bool)
        if audio.shape != visual.shape or audio.ndim != 3 or len(clip_ids) != audio.shape[0]:
            raise StoreError(
                f"tokens must be (n, T, D) for both modalities and n ids; got {audio.shape}, "
                f"{visual.shape}, {len(clip_ids)} ids"
            )
        track_ids = clip_ids if tracks is None else np.asarray(tracks, dtype=np.int64)
        valid = np.full(len(clip_ids), audio.shape[1], dtype=np.int16) if valid is None else np.asarray(valid)
        if track_ids.shape != clip_ids.shape or valid.shape != clip_ids.shape:
            raise StoreError(f"tracks and valid must be ({len(clip_ids)},); got {track_ids.shape}, {valid.shape}")
        with shards.writer_lock(self.root):
            current = self.open(gpu=False)  # the writer clones CPU indexes
            manifest = self._next_manifest(current, audio, model_id, frame_s)
            if current is not None:
                fresh = ~np.isin(clip_ids, current.clip_ids[current.live])
                if not fresh.any():
                    return None
                clip_ids, audio, visual, present = clip_ids[fresh], audio[fresh], visual[fresh], present[fresh]
                track_ids, valid = track_ids[fresh], valid[fresh]
            tokens = {"audio": audio, "visual": visual}
            rows = np.arange(manifest.rows, manifest.rows + len(clip_ids))
            manifest.shards.append(self._write_shard(clip_ids, tokens, present, (track_ids, valid)))
            if current is None or len(current) + len(clip_ids) >= self.rebuild_growth * current.manifest.build_size:
                return self._rebuilt(manifest)
            return self._publish(manifest, self._grown_indexes(current, manifest, tokens, rows, present))

    def delete(self, clip_ids: list[int]) -> str | None:
        """Hide clips from every later search: their vectors leave the FAISS indexes. None if absent."""
        with shards.writer_lock(self.root):
            current = self.open(gpu=False, indexes=False)  # ids first; CPU indexes read (to clone) only if needed
            if current is None:
                return None
            rows = current.rows_of(clip_ids)
            if len(rows) == 0:
                return None
            manifest = Manifest(**{**asdict(current.manifest), "version": current.manifest.version + 1})
            manifest.deleted = sorted(set(manifest.deleted) | {int(r) for r in rows})
            frame_ids = build.frame_ids(rows, current.frames)
            indexes = {m: shards.without_ids(current.index[m], frame_ids) for m in MODALITIES}
            return self._publish(manifest, indexes)

    def compact(self) -> str | None:
        """Rewrite the live rows into one shard, rebuild the indexes (type chosen for the size) without the
        deleted clips, and delete the shards that no kept version uses."""
        with shards.writer_lock(self.root):
            current = self.open(gpu=False, indexes=False)  # rebuilt from the tokens
            if current is None:
                return None
            manifest = Manifest(**{**asdict(current.manifest), "version": current.manifest.version + 1})
            manifest.shards, manifest.deleted = [self._copy_shard(current, np.flatnonzero(current.live))], []
            return self._rebuilt(manifest)

    # ------------------------------------------------------------------------------------ helpers
    def _rebuilt(self, manifest: Manifest) -> str:
        """Publish `manifest` with every index built anew over its live clips, read back from its shards a
        chunk at a time: index types chosen for the size."""
        source = StoreVersion(self.root, f"v{manifest.version:06d}", manifest=manifest)  # tokens only
        live = np.flatnonzero(source.live)
        log.info("building the indexes of %d clips", len(live))
        manifest.factory = self.factory or default_factory(len(live) * manifest.frames, manifest.dim)
        manifest.built_rows = len(live)
        indexes = {}
        for modality in MODALITIES:
            rows = live[source.present[modality][live]]
            gather = partial(source.gather, modality)
            indexes[modality] = build.build(gather, rows, manifest.frames, manifest.dim, manifest.factory)
        return self._publish(manifest, indexes)

    def _copy_shard(self, current: StoreVersion, rows: np.ndarray) -> dict[str, Any]:
        """A new shard holding `rows` of `current`, copied a chunk at a time; returns its manifest entry."""
        name = f"s{uuid.uuid4().hex[:12]}"
        shape = (len(rows), current.frames, current.manifest.dim)
        for modality in MODALITIES:
            path = self.root / "shards" / f"{name}.{modality}.npy"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=shape)
            for start in range(0, len(rows), build.CHUNK_CLIPS):
                out[start : start + build.CHUNK_CLIPS] = current.gather(
                    modality, rows[start : start + build.CHUNK_CLIPS]
                )
            out.flush()
            del out
            os.replace(tmp, path)
        shards.atomic_save(self.root / "shards" / f"{name}.ids.npy", current.clip_ids[rows])
        shards.atomic_save(self.root / "shards" / f"{name}.tracks.npy", current.track_ids[rows])
        shards.atomic_save(self.root / "shards" / f"{name}.valid.npy", current.valid[rows].astype(np.int16))
        present = np.stack([current.present[m][rows] for m in MODALITIES], axis=1)
        shards.atomic_save(self.root / "shards" / f"{name}.present.npy", present)
        return {"name": name, "rows": len(rows)}

    def _write_shard(
        self,
        clip_ids: np.ndarray,
        tokens: dict[str, np.ndarray],
        present: np.ndarray,
        tracks: tuple[np.ndarray, np.ndarray],
    ) -> dict[str, Any]:
        """An immutable shard of clips (tokens in the store's dtype) and their (track ids, valid frames);
        returns its manifest entry. Every file is written before the manifest that lists the shard, so
        a reader never sees a partial shard."""
        name = f"s{uuid.uuid4().hex[:12]}"
        for modality in MODALITIES:
            shards.atomic_save(self.root / "shards" / f"{name}.{modality}.npy", tokens[modality].astype(self.dtype))
        shards.atomic_save(self.root / "shards" / f"{name}.ids.npy", clip_ids)
        shards.atomic_save(self.root / "shards" / f"{name}.tracks.npy", tracks[0].astype(np.int64))
        shards.atomic_save(self.root / "shards" / f"{name}.valid.npy", tracks[1].astype(np.int16))
        shards.atomic_save(self.root / "shards" / f"{name}.present.npy", present)
        return {"name": name, "rows": len(clip_ids)}

    def _next_manifest(
        self, current: StoreVersion | None, tokens: np.ndarray, model_id: str, frame_s: float | None
    ) -> Manifest:
        """The next version's manifest (a new store's index types are chosen when its indexes are built)."""
        _, frames, dim = tokens.shape
        if current is None:
            step = frame_s or PreprocessConfig().frame_s(frames)
            return Manifest(1, frames, dim, self.dtype, model_id, factory="", frame_s=step)
        m = current.manifest
        if (m.frames, m.dim) != (frames, dim) or m.model_id != model_id:
            raise StoreError(
                f"the store holds ({m.frames}, {m.dim}) tokens of model {m.model_id!r}; "
                f"got ({frames}, {dim}) of {model_id!r}: use another index directory"
            )
        return Manifest(**{**asdict(m), "version": m.version + 1})

    def _grown_indexes(
        self,
        current: StoreVersion,
        manifest: Manifest,
        tokens: dict[str, np.ndarray],
        rows: np.ndarray,
        present: np.ndarray,
    ) -> dict[str, faiss.Index]:
        """The per-frame indexes of `current` plus the given rows' tokens (no retraining)."""
        indexes = {}
        for k, modality in enumerate(MODALITIES):
            kept = rows[present[:, k]]
            vectors = tokens[modality][present[:, k]]  # (n, T, D)
            index = faiss.clone_index(current.index[modality])
            index.add_with_ids(
                np.ascontiguousarray(vectors.reshape(-1, manifest.dim), dtype=np.float32),
                build.frame_ids(kept, manifest.frames),
            )
            indexes[modality] = index
        return indexes

    def _publish(self, manifest: Manifest, indexes: dict[str, faiss.Index]) -> str:
        """Write the version folder under a temp name, rename it into place, then swap CURRENT."""
        name = f"v{manifest.version:06d}"
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root / "versions"))
        (staging / "manifest.json").write_text(json.dumps(asdict(manifest), indent=1))
        for stem, index in indexes.items():
            shards.write_index(index, staging / f"{stem}.faiss")
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
        """Drop versions older than the last `keep_versions`, then the shards none of the rest uses."""
        for folder in (self.root / "versions").glob("v*"):
            if folder.name[1:].isdigit() and int(folder.name[1:]) <= live - self.keep_versions:
                shutil.rmtree(folder, ignore_errors=True)
        self._drop_staging()
        self._collect_shards()

    def sweep_partial(self) -> int:
        """Delete what writers that died (a full disk, a kill) left: staging folders of versions never
        published, temp shard files, temp CURRENT pointers; returns how many. Takes the writer's lock."""
        with shards.writer_lock(self.root):
            return self._drop_staging()

    def _drop_staging(self) -> int:
        """(Lock held.) No writer is running, so every staging folder and temp file is a dead one's."""
        leftovers = [*(self.root / "versions").glob(".v*"), *self.root.glob(".CURRENT.*.tmp")]
        leftovers += [p for p in (self.root / "shards").glob(".*") if p.is_file()]
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            log.info("deleted %s, left by a writer that died", path.name)
        return len(leftovers)

    def _collect_shards(self) -> None:
        """Delete shard files that no kept version lists, and temp files of writers that died (we hold the
        lock, so no writer is running). A reader that mapped a deleted shard keeps its mapping."""
        used = set()
        for manifest in (self.root / "versions").glob("v*/manifest.json"):
            used |= {s["name"] for s in json.loads(manifest.read_text())["shards"]}
        for path in (self.root / "shards").iterdir():
            if path.name.startswith(".") or path.name.split(".", 1)[0] not in used:
                path.unlink(missing_ok=True)
                log.info("deleted unused shard file %s", path.name)
