"""The votes stage: the probing frames of a query (every frame of a query of up to `probes` frames, else
`probes` frames spread evenly over it: `indexer.search.sliding.spread_frames`) each find their nearest stored
frames in the FAISS index, which vote, with their cosine, for the (track, offset) hypothesis they imply; the
best-voted hypotheses are what the window stage scores (`indexer.search.windows.rescore`). A long query's true
placement gets a vote from most of its probes, a chance one from few: a spread subset finds it at a cost that
does not grow with the query."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from indexer.search.sliding import FloatArray, IntArray, spread_frames
from indexer.store.version import StoreVersion


def vote(
    version: StoreVersion,
    query: FloatArray,
    target: str,
    *,
    per_frame: int,
    hypotheses: int,
    bin_frames: int,
    probes: int,
) -> Hypotheses:
    """The `hypotheses` best-voted (track, offset bin) hypotheses (`tally`), from the `per_frame` nearest stored
    frames of each probing frame (`spread_frames`)."""
    index = version.index[target]
    starts = spread_frames(len(query), probes)
    sims, ids = index.search(np.ascontiguousarray(query[starts]), min(per_frame, index.ntotal))  # (P, k)
    return tally(
        version,
        target,
        len(query),
        Neighbours(sims, ids, starts),
        hypotheses=hypotheses,
        bin_frames=bin_frames,
    )


class Neighbours(NamedTuple):
    """Stored frames (or windows of frames) found for parts of a query, as a FAISS search returns them."""

    sims: FloatArray  # (P, k) inner products
    ids: IntArray  # (P, k) FAISS ids (row * T + frame of the stored part's first frame), -1: none
    starts: IntArray  # (P,) query frame where each probing part starts


def tally(
    version: StoreVersion,
    target: str,
    length: int,
    found: Neighbours,
    *,
    hypotheses: int,
    bin_frames: int,
) -> Hypotheses:
    """The votes of `found` for a query of `length` frames: each neighbour votes, with its inner product, for
    the (track, offset bin) it implies (offset = its place in its track - its probe's start); the `hypotheses`
    best-voted."""
    table, ids = version.tracks, found.ids
    hit = ids >= 0
    track, place = table.place(np.where(hit, ids, 0))
    alive = table.live[track] & version.present[target][table.first_row[track]] & (place < table.length[track])
    offsets = place - found.starts[:, None]
    spare = table.length[track] - length  # offsets run from min(0, spare) to max(0, spare)
    keep = hit & alive & (offsets >= np.minimum(0, spare)) & (offsets <= np.maximum(0, spare))
    bins = np.floor_divide(offsets, bin_frames)[keep]
    keys = track[keep] * (1 << 32) + (bins + (1 << 31))
    unique, inverse = np.unique(keys, return_inverse=True)
    votes = np.bincount(inverse, weights=found.sims[keep].astype(np.float64))
    best = unique[np.argsort(-votes, kind="stable")[:hypotheses]]  # best-voted first
    voted: dict[int, list[int]] = {}
    for key in best.tolist():
        voted.setdefault(key >> 32, []).append((key & 0xFFFFFFFF) - (1 << 31))
    return Hypotheses({track: sorted(bins) for track, bins in voted.items()}, {t: bins[0] for t, bins in voted.items()})


class Hypotheses(NamedTuple):
    """The best-voted (track, offset bin) hypotheses of a query."""

    bins: dict[int, list[int]]  # track index -> its offset bins (ascending); the tracks best-voted first
    lead: dict[int, int]  # track index -> its best-voted bin
