"""The window-token experiment of bench_tracks.py (`bench/window_stage.py`) on a small seeded store: its index
holds every track's windows, a query finds its source at its offset, and the scores it returns are the exact
search's at those offsets (its exact stage is the product's)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from indexer.search.sliding import score_offsets
from indexer.store.token_store import TokenStore
from tests.indexer.search.test_tracks import D, _add, _unit

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import window_stage  # noqa: E402  (a script folder, not a package)


def _store(root: Path, lengths: list[int]) -> tuple[TokenStore, list[np.ndarray]]:
    """One video per length (its id its index): random unit tokens, its clips as rows (`test_tracks._add`)."""
    rng = np.random.default_rng(5)
    tracks = [_unit(rng.standard_normal((n, D))) for n in lengths]
    store = TokenStore(root)
    _add(store, [(video, track, track) for video, track in enumerate(tracks)])
    return store, tracks


def test_window_votes_find_the_source_and_score_exactly(tmp_path: Path) -> None:
    lengths = [40, 100, 7, 64, 250, 33, 90, 120] * 4  # 7 frames: shorter than a window, scored exhaustively
    store, tracks = _store(tmp_path / "store", lengths)
    version = store.open()
    assert version is not None
    index = window_stage.window_index(version, "visual", tmp_path / "windows")
    table = version.tracks
    expected = sum(len(window_stage.window_places(int(n))) for n in table.length)
    assert index.ntotal == expected
    rng = np.random.default_rng(9)
    for source, start, length in [(4, 130, 47), (17, 10, 16), (30, 0, 8)]:
        query = tracks[source][start : start + length] + 0.2 * rng.standard_normal((length, D)).astype(np.float32)
        query /= np.linalg.norm(query, axis=1, keepdims=True)
        hits = window_stage.search_windows(version, index, query, target="visual", k=5)
        assert hits[0].track_id == source and hits[0].moments[0].offset == start
        for hit in hits:
            stored = tracks[hit.track_id].astype(np.float16).astype(np.float32)  # the store's float16 tokens
            exact = score_offsets(query, stored[None])
            at = int(np.flatnonzero(exact.offsets == hit.moments[0].offset)[0])
            assert abs(hit.score - float(exact.scores[0, at])) < 1e-5
