"""The corpus seam: what every holder of a corpus's tokens is, one token store (`indexer.store.token_store`) or
partitions of it, each a token store (`indexer.cluster.corpus`), so that writers, the API and the searchers never ask
which one they hold.

`Corpus` writes and opens; `CorpusVersion` is what a reader holds: one or more store versions (`parts`, a single
store's version is its own one part), each video's tokens in one of them (`part_of`). `Corpus.add` is the one
`add` of both writers: its arguments checked and defaulted once (`Clips`), each writer adds `Clips`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from indexer.store.version import Manifest, StoreVersion


class StoreError(RuntimeError):
    """The token store is missing, inconsistent, or was given tokens of the wrong shape."""


@dataclass(frozen=True)
class Clips:
    """Clips to add, every array's first axis one clip (n,): their ids, tokens, modalities, tracks, valid frames."""

    ids: np.ndarray  # (n,) int64 catalog clip ids
    audio: np.ndarray  # (n, T, D) L2-normalised tokens
    visual: np.ndarray  # (n, T, D)
    present: np.ndarray  # (n, 2) bool: which of (audio, visual) each clip has
    tracks: np.ndarray  # (n,) int64 track (video) of each clip
    valid: np.ndarray  # (n,) frames of each clip inside the media

    @classmethod
    def of(
        cls,
        clip_ids: np.ndarray,
        audio: np.ndarray,
        visual: np.ndarray,
        present: np.ndarray | None,
        tracks: np.ndarray | None,
        valid: np.ndarray | None,
    ) -> Clips:
        """`Corpus.add`'s arguments checked (StoreError) and defaulted: both modalities, one track per clip,
        all T frames valid."""
        ids = np.asarray(clip_ids, dtype=np.int64)
        present = np.ones((len(ids), 2), dtype=bool) if present is None else np.asarray(present, dtype=bool)
        if audio.shape != visual.shape or audio.ndim != 3 or len(ids) != audio.shape[0]:
            raise StoreError(
                f"tokens must be (n, T, D) for both modalities and n ids; got {audio.shape}, "
                f"{visual.shape}, {len(ids)} ids"
            )
        track_ids = ids if tracks is None else np.asarray(tracks, dtype=np.int64)
        valid = np.full(len(ids), audio.shape[1], dtype=np.int16) if valid is None else np.asarray(valid)
        if track_ids.shape != ids.shape or valid.shape != ids.shape:
            raise StoreError(f"tracks and valid must be ({len(ids)},); got {track_ids.shape}, {valid.shape}")
        return cls(ids, audio, visual, present, track_ids, valid)

    def __len__(self) -> int:
        return len(self.ids)

    def where(self, picked: np.ndarray) -> Clips:
        """The clips a (n,) bool mask picks."""
        return Clips(
            self.ids[picked],
            self.audio[picked],
            self.visual[picked],
            self.present[picked],
            self.tracks[picked],
            self.valid[picked],
        )

    @property
    def tokens(self) -> dict[str, np.ndarray]:
        """modality -> (n, T, D) tokens."""
        return {"audio": self.audio, "visual": self.visual}


class CorpusVersion(Protocol):
    """What a reader of a corpus holds: one published state, read-only."""

    @property
    def name(self) -> str:
        """The store version's name (v000007), or the generation's naming every part's (g000012)."""
        ...

    @property
    def number(self) -> int:
        """The version's (or generation's) number: it grows with every publish."""
        ...

    @property
    def manifest(self) -> Manifest:
        """A manifest of its tokens (model, frames, dim: the same in every part)."""
        ...

    @property
    def frames(self) -> int: ...

    @property
    def clip_ids(self) -> np.ndarray:
        """(R,) clip id of every row, part after part (with `live`: which are live)."""
        ...

    @property
    def live(self) -> np.ndarray: ...

    @property
    def parts(self) -> tuple[StoreVersion | None, ...]:
        """The store version of each part of the corpus, in part order (None: an empty part)."""
        ...

    @property
    def part_names(self) -> tuple[str | None, ...]:
        """The name of each part's store version (None: an empty part)."""
        ...

    def part_of(self, video_id: int) -> StoreVersion | None:
        """The store version holding this video's tokens."""
        ...

    def __len__(self) -> int:
        """Live clips."""
        ...


class Corpus(ABC):
    """A corpus's writer and opener (one writer at a time: each takes a file lock under `root`). Its `add` is
    written here once: the arguments become checked `Clips`, which each writer's `add_clips` adds."""

    root: Path

    @abstractmethod
    def current_name(self) -> str | None:
        """The name of the live version, one small file read (None before the first publish)."""

    @abstractmethod
    def open(self, gpu: bool = True, indexes: bool = True) -> CorpusVersion | None:
        """The live version (FAISS indexes read unless indexes=False), or None for an empty corpus."""

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
        return self.add_clips(Clips.of(clip_ids, audio, visual, present, tracks, valid), model_id, frame_s)

    @abstractmethod
    def add_clips(self, clips: Clips, model_id: str, frame_s: float | None) -> str | None:
        """`add` of checked clips: the name published, None when nothing was new."""

    @abstractmethod
    def delete(self, clip_ids: list[int]) -> str | None:
        """Hide clips from every later search; the name published, or None when none was there."""

    @abstractmethod
    def compact(self) -> str | None:
        """Rewrite the live rows without the deleted ones and rebuild the indexes; the name published, or None."""

    @abstractmethod
    def sweep_partial(self) -> int:
        """Delete what writers that died left; how many things."""
