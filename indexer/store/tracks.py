"""Tracks: which rows of a store version make one video's continuous run of frames.

A store row holds one clip's T frames. The rows of one video are written back to back in time order,
so a track is a maximal run of consecutive rows with the same track id; its frames are the rows'
frames in order, frame k of the track at k x frame_s seconds, the last row cut to its `valid`
frames (the ones inside the media). The FAISS id of a frame, row * T + frame, is then
(first row of its track) * T + its place in the track.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class TrackTable:
    """Per track (n,): its id, first row, rows, length in frames, liveness; per row: its track."""

    ids: IntArray  # (n,) the track ids given to the store (the catalog's video ids)
    first_row: IntArray  # (n,)
    rows: IntArray  # (n,) rows (clips) in the track
    length: IntArray  # (n,) frames in the track: (rows - 1) * T + valid frames of the last row
    live: BoolArray  # (n,) every row of the track is live
    track_of_row: IntArray  # (R,) index (into the arrays above) of each row's track
    frames: int  # T, frames per row

    @classmethod
    def from_rows(cls, track_ids: IntArray, valid: IntArray, live: BoolArray, frames: int) -> TrackTable:
        """track_ids, valid (frames inside the media), live: (R,) per row in store order."""
        count = len(track_ids)
        if count == 0:
            empty = np.zeros(0, dtype=np.int64)
            return cls(empty, empty, empty, empty, np.zeros(0, dtype=bool), empty, frames)
        starts = np.flatnonzero(np.r_[True, track_ids[1:] != track_ids[:-1]]).astype(np.int64)
        rows = np.diff(np.r_[starts, count]).astype(np.int64)
        last = starts + rows - 1
        length = (rows - 1) * frames + np.clip(valid[last].astype(np.int64), 1, frames)
        track_of_row = np.repeat(np.arange(len(starts), dtype=np.int64), rows)
        dead = np.bincount(track_of_row, weights=(~live).astype(np.float64), minlength=len(starts))
        return cls(track_ids[starts].astype(np.int64), starts, rows, length, dead == 0, track_of_row, frames)

    def __len__(self) -> int:
        return len(self.ids)

    def place(self, frame_ids: IntArray) -> tuple[IntArray, IntArray]:
        """FAISS frame ids -> (track index, frame's place in its track)."""
        track = self.track_of_row[frame_ids // self.frames]
        return track, frame_ids - self.first_row[track] * self.frames

    def row_range(self, track: int) -> IntArray:
        """The rows of track `track` (an index into this table)."""
        return np.arange(self.first_row[track], self.first_row[track] + self.rows[track], dtype=np.int64)
