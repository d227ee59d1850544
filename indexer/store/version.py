"""A published version of the token store, read-only: its manifest (segments in row order, deleted rows,
FAISS factory, sizes, frame_s), memory-mapped tokens, clip ids, per-row tracks and the FAISS indexes.
The layout and the writer are in `indexer.store.token_store`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from indexer.store import segments
from indexer.store.build import CoarseTable, coarse_table, read_index
from indexer.store.tracks import TrackTable
from model.features import PreprocessConfig

MODALITIES = ("audio", "visual")


# Manifest fields of retired features, dropped when a manifest is read. sketch_dim, sketch_factory: the
# clip sketches, removed after 0.1.0. Every store written until then has them (0 and "IDMap2,Flat" unless
# it was built with sketches, whose version folders also hold <modality>.sketch.faiss and
# <modality>.projection.npy: never read, deleted with their folder when it is pruned).
RETIRED_FIELDS = ("sketch_dim", "sketch_factory")


@dataclass
class Manifest:
    version: int
    frames: int
    dim: int
    dtype: str
    model_id: str
    factory: str
    segments: list[dict[str, Any]] = field(default_factory=list)  # {"name": str, "rows": int}, in row order
    deleted: list[int] = field(default_factory=list)  # rows (positions in segment order) no longer live
    built_rows: int = 0  # live clips when the indexes were built (types chosen, trained); 0: the first segment's
    frame_s: float = 0.0  # seconds between consecutive frames of a track; 0: a store from before tracks

    @property
    def build_size(self) -> int:
        return self.built_rows or (self.segments[0]["rows"] if self.segments else 0)

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.segments)


def read_manifest(path: Path) -> Manifest:
    """The manifest at `path`, without the fields of retired features (`RETIRED_FIELDS`)."""
    fields = segments.from_disk(json.loads(path.read_text()))
    for name in RETIRED_FIELDS:
        fields.pop(name, None)
    return Manifest(**fields)


def write_manifest(path: Path, manifest: Manifest) -> None:
    """The manifest as JSON at `path`, in the on-disk spelling (`indexer.store.segments.to_disk`)."""
    path.write_text(json.dumps(segments.to_disk(asdict(manifest)), indent=1))


class StoreVersion:
    """A read-only view of one version: memory-mapped tokens, clip ids and the FAISS indexes (read when
    first used: `TokenStore.open` reads them at once unless asked not to)."""

    def __init__(self, root: Path, name: str, gpu: bool = False, manifest: Manifest | None = None) -> None:
        """The published version `name`, or (`manifest` given) one being built, readable for its tokens only."""
        self.root, self.name = root, name
        folder = root / "versions" / name
        self.manifest = manifest or read_manifest(folder / "manifest.json")
        names = [s["name"] for s in self.manifest.segments]
        self.tokens = {  # per modality, each segment's (rows, T, D) tokens, mapped
            m: [segments.map_array(segments.segment_path(root, n, m)) for n in names] for m in MODALITIES
        }
        ids = [np.load(segments.segment_path(root, n, "ids")) for n in names]
        self.clip_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        present = [np.load(segments.segment_path(root, n, "present")) for n in names]
        both = np.concatenate(present) if present else np.zeros((0, 2), dtype=bool)
        self.present = {m: both[:, k] for k, m in enumerate(MODALITIES)}  # the clip has this modality
        self.segment_starts = np.cumsum([0] + [s["rows"] for s in self.manifest.segments])  # (S + 1,) first rows
        self.folder, self.gpu = folder, gpu
        self.live = np.ones(len(self.clip_ids), dtype=bool)
        self.live[np.asarray(self.manifest.deleted, dtype=np.int64)] = False
        self.track_ids = segments.concat(
            [segments.track_part(root, n, "tracks", part) for n, part in zip(names, ids, strict=True)]
        )
        self.valid = segments.concat(
            [segments.track_part(root, n, "valid", part) for n, part in zip(names, ids, strict=True)]
        )

    @cached_property
    def tracks(self) -> TrackTable:
        """The tracks of this version: runs of consecutive rows of one video (`indexer.store.tracks`)."""
        frames = self.manifest.frames
        valid = np.where(self.valid > 0, self.valid, frames)  # rows from before tracks: all T frames
        return TrackTable.from_rows(self.track_ids, valid, self.live, frames)

    @property
    def frame_s(self) -> float:
        """Seconds between consecutive frames of a track (the preprocessing's clip length / T)."""
        return self.manifest.frame_s or PreprocessConfig().frame_s(self.manifest.frames)

    def track_frames(self, modality: str, track: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames [start, stop) of track `track` (an index into `tracks`), (n, D) float32."""
        table = self.tracks
        stop = int(table.length[track]) if stop is None else stop
        frames = self.manifest.frames
        first = int(table.first_row[track]) * frames
        low, high = (first + start) // frames, (first + stop - 1) // frames + 1  # rows [low, high)
        starts = self.segment_starts
        segment = int(np.searchsorted(starts, low, side="right")) - 1
        if high <= starts[segment + 1]:  # one segment (always, but for a hand-made store): a slice, no gather
            block = self.tokens[modality][segment][low - starts[segment] : high - starts[segment]]
        else:
            block = self.gather(modality, np.arange(low, high, dtype=np.int64))
        flat = np.asarray(block, dtype=np.float32).reshape(-1, self.manifest.dim)  # (rows * T, D)
        skip = first + start - low * frames
        return flat[skip : skip + stop - start]

    @cached_property
    def index(self) -> dict[str, faiss.Index]:
        """The per-frame FAISS index of each modality, read on first use (id and token readers never pay)."""
        return {m: read_index(self.folder / f"{m}.faiss", self.gpu) for m in MODALITIES}

    @cached_property
    def coarse(self) -> dict[str, CoarseTable | None]:
        """Each modality's coarse table (`indexer.store.build.CoarseTable`; None for a flat index), read from its
        index when the version is opened (`TokenStore.open`): every store with IVF indexes has one, whenever it was
        written."""
        return {m: coarse_table(self.index[m], len(self.clip_ids) * self.manifest.frames) for m in MODALITIES}

    @property
    def frames(self) -> int:
        return self.manifest.frames

    def __len__(self) -> int:
        return int(self.live.sum())

    def rows_of(self, clip_ids: list[int] | np.ndarray) -> np.ndarray:
        """The live rows holding these clip ids."""
        return np.flatnonzero(np.isin(self.clip_ids, np.asarray(clip_ids, dtype=np.int64)) & self.live)

    def gather(self, modality: str, rows: np.ndarray) -> np.ndarray:
        """Tokens of the given rows, (len(rows), T, D) float32."""
        out = np.empty((len(rows), self.manifest.frames, self.manifest.dim), dtype=np.float32)
        return self._read(modality, rows, out, frames=False)

    def frames_at(self, modality: str, frame_ids: np.ndarray) -> np.ndarray:
        """Stored frames by global id (row * T + frame), (n, D) in the store's dtype."""
        out = np.empty((len(frame_ids), self.manifest.dim), dtype=self.tokens[modality][0].dtype)
        return self._read(modality, frame_ids, out, frames=True)

    def _read(self, modality: str, at: np.ndarray, out: np.ndarray, *, frames: bool) -> np.ndarray:
        """`out` filled with the rows (frames=False: `at` are rows, out (n, T, D)) or the frames (frames=True: `at`
        are row * T + frame, out (n, D)) of `modality`, a segment at a time."""
        per_row = self.manifest.frames if frames else 1
        segment_of = np.searchsorted(self.segment_starts * per_row, at, side="right") - 1
        for segment in np.unique(segment_of).tolist():
            picked = segment_of == segment
            block = self.tokens[modality][segment]
            flat = block.reshape(-1, self.manifest.dim) if frames else block  # (rows * T, D) view, or (rows, T, D)
            taken = at[picked] - int(self.segment_starts[segment]) * per_row
            if flat.dtype == out.dtype and picked.all():  # straight into `out`: torch copies rows on every core
                torch.index_select(as_tensor(flat), 0, torch.from_numpy(taken), out=torch.from_numpy(out))
            else:
                out[picked] = flat[taken]
        return out

    # ------------------------------------------------------------------------------------ the corpus seam
    @property
    def number(self) -> int:
        """`indexer.store.corpus.CorpusVersion.number`: the version's."""
        return self.manifest.version

    @property
    def parts(self) -> tuple[StoreVersion | None, ...]:
        """`indexer.store.corpus.CorpusVersion.parts`: one store's version is its own one part."""
        return (self,)

    @property
    def part_names(self) -> tuple[str | None, ...]:
        return (self.name,)

    def part_of(self, video_id: int) -> StoreVersion | None:
        """Every video of one store is in it."""
        return self


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A zero-copy tensor over a read-only (memory-mapped) array; torch only reads it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)
