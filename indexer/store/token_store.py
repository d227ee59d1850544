"""The token store: per-frame global tokens of every indexed clip, an exact copy for re-ranking and a
FAISS index per modality for candidates, in versioned directories swapped in atomically.

Layout under `root` (the segment files' own: `indexer.store.segments`):
    <segment files>                   each segment's tokens, clip ids, tracks, valid frames, modalities
    versions/v000007/manifest.json    the segments in row order, deleted clip ids, FAISS factory, sizes
    versions/v000007/<modality>.faiss per-frame index, id = row * T + frame
    CURRENT                           the name of the live version (replaced with os.replace)

A track is a video's frames of one modality on one grid: frame k at k x frame_s seconds (frame_s,
the clip length / T, is in the manifest), the rows of its clips back to back, so the FAISS id
row * T + frame of a frame is also its place in the track (row - the track's first row) * T + frame.
Segments written before tracks existed read as one track per row.

A version is never modified: adding writes a new segment and a new version whose FAISS indexes are
the previous ones plus the new vectors (no retraining) until the store has grown REBUILD_GROWTH-fold
since its indexes were built, when they are rebuilt for the new size (index types re-chosen, IVF
retrained; amortised, as a growing array's copies), deleting writes a version with the clips' vectors
removed and their ids listed as deleted, `compact` rewrites one segment without them, re-chooses the
index types for the size and deletes the segments that no kept version uses. A reader opens CURRENT
once and sees one complete version for as long as it holds it.

Stores written before the clip sketches were removed (after 0.1.0) open as they are: their manifests'
sketch fields are dropped when read (`indexer.store.version.RETIRED_FIELDS`), their sketch files are never
read, and the next version written has neither (the old folders go when pruned).
"""

from __future__ import annotations

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

from indexer.store import build, segments
from indexer.store.build import default_factory
from indexer.store.corpus import Clips, Corpus
from indexer.store.corpus import StoreError as StoreError  # raised here; importers name it from here too
from indexer.store.version import MODALITIES, Manifest, StoreVersion, read_manifest, write_manifest
from model.features import PreprocessConfig

log = logging.getLogger(__name__)


OPEN_ATTEMPTS = 10  # a reader that lost the race with that many publishes in a row gives up
REBUILD_GROWTH = 4.0  # an add bringing the live clips to this multiple of the indexes' build size rebuilds them


class TokenStore(Corpus):
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
        segments.segment_folder(self.root).mkdir(parents=True, exist_ok=True)
        (self.root / "versions").mkdir(exist_ok=True)

    # ------------------------------------------------------------------------------------ reading
    def current_name(self) -> str | None:
        path = self.root / "CURRENT"
        return path.read_text().strip() if path.exists() else None

    def open(self, gpu: bool = True, indexes: bool = True, coarse: bool = True) -> StoreVersion | None:
        """The live version, or None for an empty store. Its per-frame FAISS indexes are read now (on the
        GPUs when faiss-gpu sees any), so that pruning the version later cannot take them from a reader, and
        their coarse tables with them (not on a first search; a writer, which never searches, passes coarse=False);
        a caller that reads only ids and tokens passes indexes=False."""
        for _ in range(OPEN_ATTEMPTS):
            name = self.current_name()
            if not name:
                return None
            try:
                version = StoreVersion(self.root, name, gpu)
                if indexes:
                    version.index  # noqa: B018  (cached on first access)
                    if coarse:
                        version.coarse  # noqa: B018
                return version
            except (OSError, RuntimeError):  # faiss reports a missing file as RuntimeError
                if self.current_name() == name:
                    raise
                # a writer published and pruned this version while we read it: open the new one
        raise StoreError(f"{self.root}: the live version changed {OPEN_ATTEMPTS} times while being opened")

    # ------------------------------------------------------------------------------------ writing
    def add_clips(self, clips: Clips, model_id: str, frame_s: float | None) -> str | None:
        """`Corpus.add` of checked clips (see there): the version published, None when nothing was new."""
        with segments.writer_lock(self.root):
            current = self.open(gpu=False, coarse=False)  # the writer clones CPU indexes
            manifest = self._next_manifest(current, clips.audio, model_id, frame_s)
            if current is not None:
                fresh = ~np.isin(clips.ids, current.clip_ids[current.live])
                if not fresh.any():
                    return None
                clips = clips.where(fresh)
            rows = np.arange(manifest.rows, manifest.rows + len(clips))
            manifest.segments.append(self._write_segment(clips))
            if current is None or len(current) + len(clips) >= self.rebuild_growth * current.manifest.build_size:
                return self._rebuilt(manifest)
            return self._publish(manifest, self._grown_indexes(current, manifest, clips.tokens, rows, clips.present))

    def delete(self, clip_ids: list[int]) -> str | None:
        """Hide clips from every later search: their vectors leave the FAISS indexes. None if absent."""
        with segments.writer_lock(self.root):
            current = self.open(gpu=False, indexes=False)  # ids first; CPU indexes read (to clone) only if needed
            if current is None:
                return None
            rows = current.rows_of(clip_ids)
            if len(rows) == 0:
                return None
            manifest = Manifest(**{**asdict(current.manifest), "version": current.manifest.version + 1})
            manifest.deleted = sorted(set(manifest.deleted) | {int(r) for r in rows})
            frame_ids = build.frame_ids(rows, current.frames)
            indexes = {m: segments.without_ids(current.index[m], frame_ids) for m in MODALITIES}
            return self._publish(manifest, indexes)

    def compact(self) -> str | None:
        """Rewrite the live rows into one segment, rebuild the indexes (type chosen for the size) without the
        deleted clips, and delete the segments that no kept version uses."""
        with segments.writer_lock(self.root):
            current = self.open(gpu=False, indexes=False)  # rebuilt from the tokens
            if current is None:
                return None
            manifest = Manifest(**{**asdict(current.manifest), "version": current.manifest.version + 1})
            manifest.segments, manifest.deleted = [self._copy_segment(current, np.flatnonzero(current.live))], []
            return self._rebuilt(manifest)

    # ------------------------------------------------------------------------------------ helpers
    def _rebuilt(self, manifest: Manifest) -> str:
        """Publish `manifest` with every index built anew over its live clips, read back from its segments a
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

    def _copy_segment(self, current: StoreVersion, rows: np.ndarray) -> dict[str, Any]:
        """A new segment holding `rows` of `current`, copied a chunk at a time; returns its manifest entry."""
        name = f"s{uuid.uuid4().hex[:12]}"
        shape = (len(rows), current.frames, current.manifest.dim)
        for modality in MODALITIES:
            path = segments.segment_path(self.root, name, modality)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=shape)
            for start in range(0, len(rows), build.CHUNK_CLIPS):
                out[start : start + build.CHUNK_CLIPS] = current.gather(
                    modality, rows[start : start + build.CHUNK_CLIPS]
                )
            out.flush()
            del out
            os.replace(tmp, path)
        present = np.stack([current.present[m][rows] for m in MODALITIES], axis=1)
        self._save_rows(name, current.clip_ids[rows], current.track_ids[rows], current.valid[rows], present)
        return {"name": name, "rows": len(rows)}

    def _write_segment(self, clips: Clips) -> dict[str, Any]:
        """An immutable segment of clips (tokens in the store's dtype) and their track ids and valid frames;
        returns its manifest entry. Every file is written before the manifest that lists the segment, so
        a reader never sees a partial segment."""
        name = f"s{uuid.uuid4().hex[:12]}"
        for modality, tokens in clips.tokens.items():
            segments.atomic_save(segments.segment_path(self.root, name, modality), tokens.astype(self.dtype))
        self._save_rows(name, clips.ids, clips.tracks, clips.valid, clips.present)
        return {"name": name, "rows": len(clips)}

    def _save_rows(
        self, name: str, clip_ids: np.ndarray, tracks: np.ndarray, valid: np.ndarray, present: np.ndarray
    ) -> None:
        """Segment `name`'s per-row files: clip ids, track ids, valid frames (n,) and present (n, 2)."""
        segments.atomic_save(segments.segment_path(self.root, name, "ids"), clip_ids)
        segments.atomic_save(segments.segment_path(self.root, name, "tracks"), tracks.astype(np.int64))
        segments.atomic_save(segments.segment_path(self.root, name, "valid"), valid.astype(np.int16))
        segments.atomic_save(segments.segment_path(self.root, name, "present"), present)

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
        write_manifest(staging / "manifest.json", manifest)
        for stem, index in indexes.items():
            segments.write_index(index, staging / f"{stem}.faiss")
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
        """Drop versions older than the last `keep_versions`, then the segments none of the rest uses."""
        for folder in (self.root / "versions").glob("v*"):
            if folder.name[1:].isdigit() and int(folder.name[1:]) <= live - self.keep_versions:
                shutil.rmtree(folder, ignore_errors=True)
        self._drop_staging()
        self._collect_segments()

    def sweep_partial(self) -> int:
        """Delete what writers that died (a full disk, a kill) left: staging folders of versions never
        published, temp segment files, temp CURRENT pointers; returns how many. Takes the writer's lock."""
        with segments.writer_lock(self.root):
            return self._drop_staging()

    def _drop_staging(self) -> int:
        """(Lock held.) No writer is running, so every staging folder and temp file is a dead one's."""
        leftovers = [*(self.root / "versions").glob(".v*"), *self.root.glob(".CURRENT.*.tmp")]
        leftovers += [p for p in segments.segment_folder(self.root).glob(".*") if p.is_file()]
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            log.info("deleted %s, left by a writer that died", path.name)
        return len(leftovers)

    def _collect_segments(self) -> None:
        """Delete segment files that no kept version lists, and temp files of writers that died (we hold the
        lock, so no writer is running). A reader that mapped a deleted segment keeps its mapping."""
        used = set()
        for manifest in (self.root / "versions").glob("v*/manifest.json"):
            used |= {s["name"] for s in read_manifest(manifest).segments}
        for path in segments.segment_folder(self.root).iterdir():
            if path.name.startswith(".") or path.name.split(".", 1)[0] not in used:
                path.unlink(missing_ok=True)
                log.info("deleted unused segment file %s", path.name)
