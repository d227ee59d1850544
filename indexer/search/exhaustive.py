"""The exhaustive stage: every offset of every live track with the target modality, scored exactly (small stores,
and the tracks the scan leaves out)."""

from __future__ import annotations

import numpy as np

from indexer.search.moments import Scored
from indexer.search.sliding import FloatArray, IntArray, score_offsets
from indexer.store.version import StoreVersion
from model.similarity import Strategy


def exhaustive(
    version: StoreVersion, query: FloatArray, target: str, strategy: Strategy, tracks: IntArray
) -> list[Scored]:
    """Every offset of each of `tracks` (live, with the target modality), tracks of one length in one batch."""
    table, out = version.tracks, []
    for length in np.unique(table.length[tracks]):
        group = tracks[table.length[tracks] == length]
        rows = np.concatenate([table.row_range(int(t)) for t in group])
        tokens = version.gather(target, rows).reshape(len(group), -1, version.manifest.dim)  # (n, rows*T, D)
        found = score_offsets(query, tokens[:, : int(length)], strategy)
        out += [Scored(int(t), found.offsets, found.scores[i], found.aligned) for i, t in enumerate(group)]
    return out
