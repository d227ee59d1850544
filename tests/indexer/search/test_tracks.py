"""Search over tracks against a brute-force numpy sliding search over whole tracks (the acceptance of
issue 12): scores, order and offsets, for queries shorter than, as long as and longer than a clip,
tracks of different lengths, and deleted videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.search import sliding
from indexer.search.ranking import search
from indexer.search.sliding import SCAN_STRATEGIES, pick_moments, score_offsets
from indexer.search.stage import FirstStage, Scheme
from indexer.search.windows import WindowFrames, band_means
from indexer.store.token_store import TokenStore
from model.similarity import STRATEGIES, TIE_TOLERANCE

T, D = 8, 16


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _videos(seed: int, count: int = 12) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(video id, audio (L, D), visual (L, D)) of random lengths: 3 frames to 5 clips."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 5 * T + 1, size=count)
    lengths[:3] = [T, 3, 2 * T + 3]
    return [
        (100 + v, _unit(rng.standard_normal((n, D))), _unit(rng.standard_normal((n, D)))) for v, n in enumerate(lengths)
    ]


def _add(store: TokenStore, videos: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
    """Each video as its clips (rows of T frames, the last zero-padded, `valid` its real frames)."""
    ids, tracks, valid, audio, visual = [], [], [], [], []
    for video, a, v in videos:
        rows = -(-len(a) // T)
        for r in range(rows):
            ids.append(video * 1000 + r)
            tracks.append(video)
            valid.append(min(T, len(a) - r * T))
            for out, x in ((audio, a), (visual, v)):
                clip = np.zeros((T, D), np.float32)
                clip[: valid[-1]] = x[r * T : r * T + valid[-1]]
                out.append(clip)
    store.add(np.array(ids), np.stack(audio), np.stack(visual), "m", tracks=np.array(tracks), valid=np.array(valid))


def _block_score(q: np.ndarray, c: np.ndarray, offset: int, strategy: str) -> float:
    """The strategy on the aligned block; a track shorter than the query zero-padded to the query's length
    at its place (the query's frames outside the track count 0)."""
    if len(q) <= len(c):
        a, b = q, c[offset : offset + len(q)]
    else:
        a, b = q, np.zeros_like(q)
        b[-offset : -offset + len(c)] = c
    cos = a @ b.T
    return {
        "diagonal_mean": np.diag(cos).mean(),
        "diagonal_max": np.diag(cos).max(),
        "mean": cos.mean(),
        "max": cos.max(),
    }[strategy]


def _brute(query: np.ndarray, track: np.ndarray, strategy: str, moments: int) -> tuple[float, list[int]]:
    """The hit's score and its moments' offsets over every offset of a whole track, the slow way (float64):
    moments picked as the centres of the best runs of tied offsets, then sorted by their scores; the hit's
    score is the first's."""
    q, c = query.astype(np.float64), track.astype(np.float64)
    lq, lt = len(q), len(c)
    offsets = list(range(0, lt - lq + 1)) if lq <= lt else list(range(lt - lq, 1))
    scores = [_block_score(q, c, o, strategy) for o in offsets]
    taken: list[int] = []
    alive = [True] * len(offsets)
    while len(taken) < moments and any(alive):
        best = max((s, -i) for i, s in enumerate(scores) if alive[i])
        i = -best[1]
        lo = hi = i
        while lo > 0 and alive[lo - 1] and scores[lo - 1] >= best[0] - TIE_TOLERANCE:
            lo -= 1
        while hi < len(offsets) - 1 and alive[hi + 1] and scores[hi + 1] >= best[0] - TIE_TOLERANCE:
            hi += 1
        centre = offsets[(lo + hi + 1) // 2]
        taken.append(centre)
        span = min(lq, lt)
        alive = [a and abs(max(o, 0) - max(centre, 0)) >= span for a, o in zip(alive, offsets, strict=True)]
    ranked = sorted(taken, key=lambda o: -scores[offsets.index(o)])
    return scores[offsets.index(ranked[0])], ranked


CASES = [(strategy, "auto") for strategy in STRATEGIES] + [(s, "scan") for s in SCAN_STRATEGIES]


@pytest.mark.parametrize(("strategy", "scheme"), CASES)
@pytest.mark.parametrize("length", [3, T, T + 5, 3 * T + 2])
def test_track_search_equals_brute_force(tmp_path: Path, strategy: str, scheme: Scheme, length: int) -> None:
    """auto: a small store is scored exhaustively; scan: what large stores use for long queries."""
    store = TokenStore(tmp_path / "index", dtype="float32")
    videos = _videos(seed=length)
    _add(store, videos[:8])
    _add(store, videos[8:])  # a second shard
    deleted = [videos[1][0], videos[9][0]]
    store.delete([c for v in deleted for c in range(v * 1000, v * 1000 + 6)])
    query = _unit(np.random.default_rng(7).standard_normal((length, D)))
    hits = search(store.open(), query, target="visual", k=20, strategy=strategy, stage=FirstStage(scheme), moments=3)
    expected = {v: _brute(query, visual, strategy, 3) for v, _, visual in videos if v not in deleted}
    order = sorted(expected, key=lambda v: -expected[v][0])
    assert [h.track_id for h in hits] == order[:20]
    assert np.allclose([h.score for h in hits], [expected[v][0] for v in order[:20]], atol=1e-5)
    assert [[m.offset for m in h.moments] for h in hits] == [expected[v][1] for v in order[:20]]
    for hit in hits:
        first = hit.moments[0]
        assert first.start == round(max(first.offset, 0) * 10.24 / T, 3)
        assert len(first.frame_scores) == min(length, len(dict((v, x) for v, _, x in videos)[hit.track_id]))


@pytest.mark.parametrize("k", [1, 3])
def test_the_scan_on_float16_tokens_ranks_as_the_exhaustive_search(tmp_path: Path, k: int) -> None:
    """The scan's float16 products only nominate: its answer (exactly rescored) equals the exhaustive one on
    the same stored tokens, also when few are asked for (nominees near the k-th best)."""
    store = TokenStore(tmp_path / "index", dtype="float16")
    videos = _videos(seed=11, count=30)
    _add(store, videos[:20])
    _add(store, videos[20:])
    version = store.open()
    rng = np.random.default_rng(5)
    for length in (T + 1, 2 * T, 3 * T, 6 * T):
        source = videos[int(rng.integers(3, 30))][2]
        start = int(rng.integers(0, max(1, len(source) - length)))
        query = _unit(source[start : start + length] + 0.8 * rng.standard_normal((len(source[start:][:length]), D)))
        if length == 6 * T:  # longer than every track: each slides inside the query
            query = _unit(rng.standard_normal((length, D)))
        found, truth = (
            search(version, query, target="visual", k=k, stage=FirstStage(scheme), moments=2)
            for scheme in ("scan", "exhaustive")
        )
        assert [h.track_id for h in found] == [h.track_id for h in truth]
        assert np.allclose([h.score for h in found], [h.score for h in truth], atol=1e-6)
        assert [[m.offset for m in h.moments] for h in found] == [[m.offset for m in h.moments] for h in truth]


def test_an_excerpt_is_found_at_its_offset_across_clip_boundaries(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "index", dtype="float32")
    videos = _videos(seed=3)
    _add(store, videos)
    video, _, visual = videos[2]  # 2T + 3 frames: three rows
    for start, length in ((5, 6), (T - 2, T), (1, 2 * T)):
        hit = search(store.open(), visual[start : start + length], target="visual", k=1)[0]
        assert hit.track_id == video and hit.moments[0].offset == start
        assert np.allclose(hit.moments[0].frame_scores, 1.0, atol=1e-5)


def test_moment_placed_by_the_query_modality(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "index", dtype="float32")
    videos = _videos(seed=4)
    _add(store, videos)
    video, audio, _ = videos[4]
    query = audio[2 : 2 + 5]
    hits = search(store.open(), query, target="visual", k=len(videos), moment_from="audio")
    (hit,) = [h for h in hits if h.track_id == video]
    assert hit.moments[0].offset == 2
    assert hit.moments[0].match == pytest.approx(1.0, abs=1e-5)  # the query's own frames, there


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("moment_from", [None, "audio"])
def test_moments_are_sorted_by_score_and_the_hit_scores_its_first(
    tmp_path: Path, strategy: str, moment_from: str | None
) -> None:
    """Whatever places the moments (the target or the query's own modality), a hit shows them by their
    score, best first, its own score is the first's, and hits come by that score."""
    store = TokenStore(tmp_path / "index", dtype="float32")
    videos = _videos(seed=21, count=16)
    _add(store, videos)
    rng = np.random.default_rng(8)
    for length in (3, T, 3 * T + 2):
        query = _unit(rng.standard_normal((length, D)))
        hits = search(store.open(), query, target="visual", k=16, strategy=strategy, moments=4, moment_from=moment_from)
        assert len(hits) == 16
        for hit in hits:
            scores = [m.score for m in hit.moments]
            assert scores == sorted(scores, reverse=True) and hit.score == scores[0]
            matches = [m.match for m in hit.moments]
            assert matches == [None] * len(matches) if moment_from is None else None not in matches
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_a_short_track_cannot_outrank_the_source_of_a_longer_query(tmp_path: Path) -> None:
    """A 10-s clip cut from a long video, indexed on its own, matches its part of a 45-s excerpt exactly; the
    source matches all of it a little less well. Scored over the query's frames, the source comes first and
    the clip scores its share (16 of 70 frames)."""
    rng = np.random.default_rng(9)
    source = _unit(rng.standard_normal((120, D)))
    excerpt = source[30:100]  # 70 frames
    store = TokenStore(tmp_path / "index", dtype="float32")
    noisy = _unit(source + 0.3 * rng.standard_normal(source.shape))  # each frame's cosine ~0.96
    clip = source[40 : 40 + 2 * T]  # inside the excerpt, exact
    _add(store, [(1, noisy, noisy), (2, clip, clip), (3, _unit(rng.standard_normal((50, D))), noisy[:50])])
    hits = search(store.open(), excerpt, target="visual", k=3)
    assert [h.track_id for h in hits[:2]] == [1, 2]
    assert hits[0].moments[0].offset == 30
    assert hits[1].score == pytest.approx(2 * T / 70, abs=1e-5) and hits[1].moments[0].offset == -10


def _naive_centre(scores: list[float], tolerance: float) -> int:
    at = scores.index(max(scores))
    first = last = at
    while first > 0 and scores[first - 1] >= scores[at] - tolerance:
        first -= 1
    while last < len(scores) - 1 and scores[last + 1] >= scores[at] - tolerance:
        last += 1
    return (first + last + 1) // 2


def test_a_moment_is_the_centre_of_the_tie_around_the_best_window() -> None:
    rng = np.random.default_rng(5)
    offsets = np.arange(12, dtype=np.int64)
    for row in range(200):
        scores = rng.random(12).astype(np.float32)
        if row % 3 == 0:  # a plateau of near-equal windows
            scores[2:9] = np.minimum(scores[2:9], 0.3) + 0.9
        elif row % 3 == 1:
            scores[7:] = 1.0 + 0.001 * rng.random(5).astype(np.float32)
        for tolerance in (0.0, 0.005, 0.05):
            (first,) = pick_moments(offsets, scores, aligned=12, count=1, tolerance=tolerance)
            assert first == _naive_centre(scores.tolist(), tolerance)


def test_a_query_matching_a_still_scene_lands_in_its_middle() -> None:
    scene = _unit(np.random.default_rng(6).standard_normal((3, D)))
    track = scene[[0] * 4 + [1] * 9 + [2] * 3]  # frames 4..12 show the same still scene
    found = score_offsets(np.repeat(scene[1:2], 3, axis=0), track[None])
    (first,) = pick_moments(found.offsets, found.scores[0], found.aligned, 1)
    assert found.offsets[first] == 7  # the tied windows start at 4..10: the centre, not the first or last


@pytest.mark.parametrize("native_half", [True, False])
def test_the_scans_products_agree_with_float32_on_either_kind_of_cpu(
    monkeypatch: pytest.MonkeyPatch, native_half: bool
) -> None:
    """float16 products (CPUs with AVX-512) and float32 ones after converting (AVX2 only, queries of more than
    CONVERT_ABOVE frames) are both within a float16 rounding of the exact products, written whole or into a view."""
    rng = np.random.default_rng(11)
    query = rng.standard_normal((sliding.CONVERT_ABOVE + 1, 64)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    frames = rng.standard_normal((500, 64)).astype(np.float32)
    frames = (frames / np.linalg.norm(frames, axis=1, keepdims=True)).astype(np.float16)
    monkeypatch.setattr(sliding, "NATIVE_HALF", native_half)
    exact = query @ frames.astype(np.float32).T
    whole = sliding.approximate_products(query, frames)
    assert whole.dtype == np.float32 and whole.shape == (len(query), 500)
    assert np.abs(whole - exact).max() <= 2**-10
    if not native_half:  # converted first: the float32 product itself
        np.testing.assert_allclose(whole, exact, atol=1e-5)
    into = torch.zeros((len(query), 600), dtype=torch.float32)
    sliding.approximate_products(query, frames, into=into[:, 50:550])
    np.testing.assert_array_equal(into.numpy()[:, 50:550], whole)
    assert not into.numpy()[:, :50].any() and not into.numpy()[:, 550:].any()


@pytest.mark.parametrize("length", [1, 5, 40])
def test_the_band_scorer_equals_the_aligned_pairs_mean_at_every_offset(length: int) -> None:
    """band_means (the exact stage's diagonal_mean from the aligned pairs alone, windows of several widths
    batched) equals a naive per-offset mean of the aligned cosines, float16 frames read as float32."""
    rng = np.random.default_rng(length)
    query = _unit(rng.standard_normal((length, D)))
    sizes = [length, length + 3, length + 9, length + 3, length]  # 1, 4, 10, 4, 1 offsets
    frames = _unit(rng.standard_normal((sum(sizes), D))).astype(np.float16)
    windows = WindowFrames(frames, np.r_[0, np.cumsum(sizes)].astype(np.int64))
    found = band_means(query, windows)
    for i, size in enumerate(sizes):
        block = frames[windows.at[i] : windows.at[i + 1]].astype(np.float32)
        naive = [np.mean(np.sum(block[o : o + length] * query, axis=1)) for o in range(size - length + 1)]
        assert found[i].dtype == np.float32
        np.testing.assert_allclose(found[i], naive, atol=1e-6)
