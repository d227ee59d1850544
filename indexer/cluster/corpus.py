"""A corpus split into S shards: each an ordinary token store (`indexer.store.token_store`, its own shards of tokens,
FAISS indexes and versions), a video assigned to one shard by its id, and generations that name each
shard's version, so that a reader sees every shard of one publish or none of it.

Layout under `root` (the data dir's `index/`) when S > 1:
    SHARDS                    the shard count S (a store written with another count is refused)
    shard-00/ .. shard-SS/    one `TokenStore` each (today's format)
    generations/g000012.json  {"number": 12, "versions": ["v000004", null, "v000003"]} (null: shard empty)
    GENERATION                the name of the live generation (replaced with os.replace)
    .lock                     the generation writer's lock (held across a whole multi-shard add or delete)

A write (add, delete, compact) takes the generation lock, writes each touched shard's new version (each
shard's own `CURRENT` moves, which no reader of a sharded corpus follows), then publishes a generation naming
every shard's current version. Readers open `GENERATION` once and the versions it names, so a search never
sees a deleted video after the delete returned, nor half of a publish. A writer that died between its shard
versions and its generation leaves complete shard versions (each video lives in one shard, written whole)
that the next write or `sweep_partial` publishes. With S = 1 nothing of this exists: `open_corpus` hands out
the plain `TokenStore` at `root`, as before shards.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from indexer.store.corpus import Clips, StoreError
from indexer.store.corpus import Corpus as Corpus  # the seam's names, where the corpus's users import them
from indexer.store.corpus import CorpusVersion as CorpusVersion
from indexer.store.datadir import DataDir
from indexer.store.segments import writer_lock
from indexer.store.token_store import OPEN_ATTEMPTS, TokenStore
from indexer.store.version import Manifest, StoreVersion

log = logging.getLogger(__name__)

KEEP_GENERATIONS = 8  # generation files kept (readers hold versions, not generation files)
_MIX = 0x9E3779B97F4A7C15  # splitmix64's constants: ids spread over the shards whatever their stride
_M1, _M2, _MASK = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, (1 << 64) - 1


def shard_of(video_id: int, shards: int) -> int:
    """The shard of a video (a track): splitmix64 of its id, modulo S. Stable: a video never moves."""
    z = (int(video_id) + _MIX) & _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return (z ^ (z >> 31)) % shards


def shard_name(shard: int) -> str:
    return f"shard-{shard:02d}"


@dataclass(frozen=True)
class Generation:
    """One published state of a sharded corpus: the version each shard is read at (None: the shard is empty)."""

    number: int
    versions: tuple[str | None, ...]

    @property
    def name(self) -> str:
        return f"g{self.number:06d}"


class ShardedVersion:
    """What a reader of a sharded corpus holds (a `CorpusVersion`): one generation and each shard's version (None:
    empty)."""

    def __init__(self, generation: Generation, parts: tuple[StoreVersion | None, ...]) -> None:
        self.generation, self.parts = generation, parts

    @property
    def name(self) -> str:
        return self.generation.name

    @property
    def number(self) -> int:
        return self.generation.number

    @property
    def manifest(self) -> Manifest:
        """The first non-empty shard's manifest (every shard holds tokens of one model, of one size)."""
        return next(p.manifest for p in self.parts if p is not None)

    @property
    def frames(self) -> int:
        return self.manifest.frames

    @property
    def part_names(self) -> tuple[str | None, ...]:
        return self.generation.versions

    def part_of(self, video_id: int) -> StoreVersion | None:
        """The version of the shard holding this video."""
        return self.parts[shard_of(video_id, len(self.parts))]

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts if p is not None)

    @property
    def clip_ids(self) -> np.ndarray:
        """Every shard's clip ids, shard after shard (with `live`: which are live)."""
        return np.concatenate([p.clip_ids for p in self.parts if p is not None] or [np.zeros(0, np.int64)])

    @property
    def live(self) -> np.ndarray:
        return np.concatenate([p.live for p in self.parts if p is not None] or [np.zeros(0, bool)])


def version_part(version: CorpusVersion | None, video_id: int) -> StoreVersion | None:
    """The store version holding a video's tokens (None: no version loaded)."""
    return None if version is None else version.part_of(video_id)


def version_number(version: CorpusVersion | None) -> int:
    """The loaded version's number (a sharded corpus: its generation's); 0 for none."""
    return 0 if version is None else version.number


class ShardedStore(Corpus):
    """Writer and opener of a corpus of `shards` token stores under `root` (see the module)."""

    def __init__(
        self, root: str | os.PathLike[str], shards: int, dtype: str = "float16", factory: str | None = None
    ) -> None:
        if shards < 2:
            raise ValueError(f"a sharded store has at least 2 shards, not {shards}: use a TokenStore")
        self.root, self.shards = Path(root), shards
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_layout()
        (self.root / "generations").mkdir(exist_ok=True)
        self.stores = [TokenStore(self.root / shard_name(s), dtype, factory) for s in range(shards)]

    def _check_layout(self) -> None:
        marker = self.root / "SHARDS"
        if (self.root / "CURRENT").exists():
            raise StoreError(f"{self.root} holds an unsharded token store: index into another data dir to shard")
        if marker.exists() and int(marker.read_text()) != self.shards:
            raise StoreError(f"{self.root} holds {marker.read_text().strip()} shards, not {self.shards}")
        if not marker.exists():
            marker.write_text(f"{self.shards}\n")

    # ------------------------------------------------------------------------------------ reading
    def current_name(self) -> str | None:
        path = self.root / "GENERATION"
        return path.read_text().strip() if path.exists() else None

    def generation(self, name: str | None = None) -> Generation | None:
        """A published generation (default: the live one), or None before the first publish."""
        name = name or self.current_name()
        if not name:
            return None
        fields = json.loads((self.root / "generations" / f"{name}.json").read_text())
        return Generation(int(fields["number"]), tuple(fields["versions"]))

    def open(self, gpu: bool = True, indexes: bool = True) -> ShardedVersion | None:
        """The live generation with each shard's version open (their FAISS indexes read unless indexes=False),
        or None when no shard holds anything."""
        for _ in range(OPEN_ATTEMPTS):
            name = self.current_name()
            try:
                generation = self.generation(name)
                if generation is None or not any(generation.versions):
                    return None
                return ShardedVersion(generation, tuple(self._open_part(generation, gpu, indexes)))
            except (OSError, RuntimeError):
                if self.current_name() == name:
                    raise
        raise StoreError(f"{self.root}: the live generation changed {OPEN_ATTEMPTS} times while being opened")

    def _open_part(self, generation: Generation, gpu: bool, indexes: bool) -> Iterator[StoreVersion | None]:
        for store, name in zip(self.stores, generation.versions, strict=True):
            version = None if name is None else StoreVersion(store.root, name, gpu)
            if version is not None and indexes:
                version.index  # noqa: B018  (cached on first access)
            yield version

    # ------------------------------------------------------------------------------------ writing
    def add_clips(self, clips: Clips, model_id: str, frame_s: float | None) -> str | None:
        """`Corpus.add` over the shards: each clip goes to its track's shard, then one generation names them all.
        Returns the generation published (None when nothing was new)."""
        shard = np.array([shard_of(int(t), self.shards) for t in clips.tracks], dtype=np.int64)
        with writer_lock(self.root):
            added = [
                self.stores[s].add_clips(clips.where(shard == s), model_id, frame_s) for s in np.unique(shard).tolist()
            ]
            return self._publish() if any(name is not None for name in added) else None

    def delete(self, clip_ids: list[int]) -> str | None:
        """Hide clips from every later search (in the shards holding them); the generation published, or None."""
        with writer_lock(self.root):
            changed = [store.delete(clip_ids) is not None for store in self.stores]  # a shard without them: None
            return self._publish() if any(changed) else None

    def compact(self) -> str | None:
        """`TokenStore.compact` of every shard, then one generation."""
        with writer_lock(self.root):
            changed = [store.compact() is not None for store in self.stores]
            return self._publish() if any(changed) else None

    def sweep_partial(self) -> int:
        """What dead writers left in every shard; and the shard versions a writer published without living to
        publish their generation are published now (each is complete)."""
        with writer_lock(self.root):
            swept = sum(store.sweep_partial() for store in self.stores)
            current = self.generation()
            if tuple(s.current_name() for s in self.stores) != (current.versions if current else (None,) * self.shards):
                self._publish()
            return swept

    def _publish(self) -> str:
        """(Lock held.) A generation naming every shard's current version, then GENERATION swapped to it."""
        current = self.generation()
        generation = Generation((current.number if current else 0) + 1, tuple(s.current_name() for s in self.stores))
        folder = self.root / "generations"
        staging = folder / f".{generation.name}.{os.getpid()}.tmp"
        staging.write_text(json.dumps(asdict(generation)))
        os.replace(staging, folder / f"{generation.name}.json")
        pointer = self.root / f".GENERATION.{os.getpid()}.tmp"
        pointer.write_text(generation.name)
        os.replace(pointer, self.root / "GENERATION")
        for old in folder.glob("g*.json"):
            if old.stem[1:].isdigit() and int(old.stem[1:]) <= generation.number - KEEP_GENERATIONS:
                old.unlink(missing_ok=True)
        log.info("published generation %s: %s", generation.name, generation.versions)
        return generation.name


def open_corpus(data: DataDir, factory: str | None = None) -> Corpus:
    """The data dir's token store: one `TokenStore` (data.shards == 1, the layout before shards), else the
    `ShardedStore` of data.shards shards."""
    if data.shards <= 1:
        return TokenStore(data.index, factory=factory)
    return ShardedStore(data.index, data.shards, factory=factory)
