"""The votes at every query length (issue 30): the probing frames, the coarse table read from an IVF index, the
rough scores of the window stage against naive loops, and the votes' answer against the exhaustive search."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.search import windows
from indexer.search.ranking import search
from indexer.search.sliding import score_offsets, spread_frames
from indexer.search.stage import FirstStage
from indexer.store.build import frame_ids
from indexer.store.token_store import TokenStore
from indexer.store.version import StoreVersion
from tests.indexer.search.test_tracks import T, _add, _unit, _videos

Videos = list[tuple[int, np.ndarray, np.ndarray]]


def _store(tmp_path: Path, factory: str, seed: int = 4) -> tuple[StoreVersion, Videos]:
    store = TokenStore(tmp_path / factory.replace(",", "-"), dtype="float32", factory=factory)
    videos = _videos(seed=seed, count=30)
    _add(store, videos[:20])
    _add(store, videos[20:])  # a second segment
    return store.open(), videos


def test_spread_frames_are_every_frame_of_a_short_query_else_evenly_spread() -> None:
    assert spread_frames(5, 16).tolist() == [0, 1, 2, 3, 4]
    assert spread_frames(16, 16).tolist() == list(range(16))
    picked = spread_frames(281, 16)
    assert len(picked) == 16 and picked[0] == 0 and picked[-1] == 280
    assert np.all(np.diff(picked) >= 18) and np.all(np.diff(picked) <= 19)


def test_the_coarse_table_is_the_list_each_stored_frame_was_added_to(tmp_path: Path) -> None:
    version, _ = _store(tmp_path, "IVF4,Flat")
    coarse = version.coarse["visual"]
    assert coarse is not None and coarse.centroids.shape == (4, 16)
    rows = np.arange(len(version.clip_ids))
    vectors = version.gather("visual", rows).reshape(-1, 16)
    assigned = faiss.extract_index_ivf(version.index["visual"]).quantizer.assign(vectors, 1).ravel()
    assert np.array_equal(coarse.lists[frame_ids(rows, T)], assigned)
    flat, _ = _store(tmp_path, "IDMap2,Flat")
    assert flat.coarse["visual"] is None


def _naive_rough(version: StoreVersion, query: np.ndarray, window: tuple[int, int, int], picked: np.ndarray) -> list:
    """(1/R) sum over the picked query frames r of <q_r, c> at each offset o of the window, c the centroid of the
    list of the track's frame o + r, 0 outside the track: loops."""
    track, low, high = window
    length = int(version.tracks.length[track])
    coarse = version.coarse["visual"]
    assert coarse is not None
    first = int(version.tracks.first_row[track]) * T
    out = []
    for offset in range(low, high + 1):
        total = 0.0
        for r in picked.tolist():
            place = offset + r
            if 0 <= place < length:
                total += float(np.dot(query[r], coarse.centroids[coarse.lists[first + place]]))
        out.append(total / len(picked))
    return out


def test_rough_scores_equal_naive_loops(tmp_path: Path) -> None:
    """Windows inside a track, and a track shorter than the query (negative offsets: the track starts inside it);
    every offset, every 2nd and every 3rd."""
    version, _ = _store(tmp_path, "IVF4,Flat")
    coarse = version.coarse["visual"]
    assert coarse is not None
    table = version.tracks
    query = _unit(np.random.default_rng(1).standard_normal((90, 16)))
    long_track = int(np.argmax(table.length))
    short_track = int(np.argmin(table.length))
    cases = [
        (long_track, 0, 3),
        (long_track, 2, 2),
        (long_track, 5, 12),
        (short_track, int(table.length[short_track]) - 90, 0),
    ]
    picked = spread_frames(90, windows.ROUGH_FRAMES)
    for stride in (1, 2, 3):
        rough = windows.rough_means(version, query, coarse, cases, stride=stride)
        for (track, low, high), found in zip(cases, rough, strict=True):
            naive = _naive_rough(version, query, (track, low, high), picked)[::stride]
            assert len(found) == len(naive) and np.allclose(found, naive, atol=1e-5)


@pytest.mark.parametrize("length", [3, T, 2 * T + 3, 6 * T])
def test_votes_find_the_source_at_every_length_and_score_exactly(tmp_path: Path, length: int) -> None:
    """On an IVF index (the coarse table scores long queries' windows roughly): the first hit, its score and its
    first moment are the exhaustive search's; every hit's score is the exact score at its moment's offset."""
    version, videos = _store(tmp_path, "IVF4,Flat")
    rng = np.random.default_rng(length)
    hits_checked = 0
    for video, _, visual in videos:
        if len(visual) < length + 2 and (length < 6 * T or len(visual) < 3 * T):
            continue
        if length < len(visual):  # an excerpt
            start = int(rng.integers(0, len(visual) - length))
            query = _unit(visual[start : start + length] + 0.05 * rng.standard_normal((length, 16)))
        else:  # the whole video inside a longer query (other frames: noise)
            start = int(rng.integers(0, length - len(visual)))
            query = _unit(rng.standard_normal((length, 16)))
            query[start : start + len(visual)] = _unit(visual + 0.05 * rng.standard_normal(visual.shape))
        voted = search(version, query, target="visual", k=5, stage=FirstStage("votes", per_frame=64, hypotheses=64))
        exact = search(version, query, target="visual", k=5, stage=FirstStage("exhaustive"))
        assert voted[0].track_id == exact[0].track_id == video
        assert voted[0].score == pytest.approx(exact[0].score, abs=1e-5)
        assert voted[0].moments[0].offset == exact[0].moments[0].offset
        for hit in voted:
            track = int(np.flatnonzero(version.tracks.ids == hit.track_id)[0])
            scored = score_offsets(query, version.track_frames("visual", track)[None])
            at = int(np.flatnonzero(scored.offsets == hit.moments[0].offset)[0])
            assert hit.score == pytest.approx(float(scored.scores[0, at]), abs=1e-5)
        hits_checked += 1
    assert hits_checked >= 5


def test_auto_votes_at_every_length_above_the_exhaustive_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above EXHAUSTIVE_BELOW live frames "auto" never falls back to reading every token (the scan)."""
    from indexer.search import ranking

    version, videos = _store(tmp_path, "IVF4,Flat")
    monkeypatch.setattr(ranking, "EXHAUSTIVE_BELOW", 10)
    monkeypatch.setattr(ranking, "scan_candidates", lambda *a, **k: pytest.fail("the scan ran"))
    real = ranking.exhaustive
    monkeypatch.setattr(ranking, "exhaustive", lambda *a: real(*a) if len(a[-1]) == 0 else pytest.fail("exhaustive"))
    for length in (3, 3 * T):
        video, _, visual = next(v for v in videos if len(v[2]) > length)
        assert search(version, visual[:length], target="visual", k=3)[0].track_id == video


def test_the_first_stage_refuses_what_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="unknown search scheme 'fast'"):
        FirstStage("fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 1"):
        FirstStage(probes=0)


def test_voted_windows_cover_their_bins_in_few_widths() -> None:
    """Each bin +- radius is covered; merged windows are a multiple of WIDTH_STEP offsets wide unless the track is
    too short, and stay inside its offsets; unmerged ones are one per bin, a shorter track's inside spare .. 0."""
    cases = {0: ([0, 1, 9], 200), 1: ([3], 200), 2: ([40, 41], 170), 3: ([0], 5), 4: ([-5, -4, -1], -17)}
    voted, spare = {t: bins for t, (bins, _) in cases.items()}, {t: room for t, (_, room) in cases.items()}
    for merge in (True, False):
        found = windows.voted_windows(voted, spare, bin_frames=4, radius=2, merge=merge)
        assert sorted({t for t, _, _ in found}) == sorted(cases)
        for track, (bins, room) in cases.items():
            mine = [(low, high) for t, low, high in found if t == track]
            first, last = min(0, room), max(0, room)
            covered = {o for low, high in mine for o in range(low, high + 1)}
            assert all(min(max(o, first), last) in covered for b in bins for o in range(4 * b - 2, 4 * b + 6))
            assert all(first <= low <= high <= last for low, high in mine)
            if merge:
                assert all(
                    (high - low + 1) % windows.WIDTH_STEP == 0 or high - low == last - first for low, high in mine
                )
            else:
                assert len(mine) == len(bins)
