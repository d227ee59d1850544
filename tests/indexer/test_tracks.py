"""Search over tracks against a brute-force numpy sliding search over whole tracks (the acceptance of
issue 12): scores, order and offsets, for queries shorter than, as long as and longer than a clip,
tracks of different lengths, and deleted videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.search import search
from indexer.store import TokenStore
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
    if len(q) <= len(c):
        a, b = q, c[offset : offset + len(q)]
    else:
        a, b = q[-offset : -offset + len(c)], c
    cos = a @ b.T
    return {
        "diagonal_mean": np.diag(cos).mean(),
        "diagonal_max": np.diag(cos).max(),
        "mean": cos.mean(),
        "max": cos.max(),
    }[strategy]


def _brute(query: np.ndarray, track: np.ndarray, strategy: str, moments: int) -> tuple[float, list[int]]:
    """Best score and the moments' offsets over every offset of a whole track, the slow way (float64)."""
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
    return max(scores), taken


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("length", [3, T, T + 5, 3 * T + 2])
def test_track_search_equals_brute_force(tmp_path: Path, strategy: str, length: int) -> None:
    store = TokenStore(tmp_path / "index", dtype="float32")
    videos = _videos(seed=length)
    _add(store, videos[:8])
    _add(store, videos[8:])  # a second shard
    deleted = [videos[1][0], videos[9][0]]
    store.delete([c for v in deleted for c in range(v * 1000, v * 1000 + 6)])
    query = _unit(np.random.default_rng(7).standard_normal((length, D)))
    hits = search(store.open(), query, target="visual", k=20, strategy=strategy, moments=3)
    expected = {v: _brute(query, visual, strategy, 3) for v, _, visual in videos if v not in deleted}
    order = sorted(expected, key=lambda v: -expected[v][0])
    assert [h.track_id for h in hits] == order[:20]
    assert np.allclose([h.score for h in hits], [expected[v][0] for v in order[:20]], atol=1e-5)
    assert [[m.offset for m in h.moments] for h in hits] == [expected[v][1] for v in order[:20]]
    for hit in hits:
        first = hit.moments[0]
        assert first.start == round(max(first.offset, 0) * 10.24 / T, 3)
        assert len(first.frame_scores) == min(length, len(dict((v, x) for v, _, x in videos)[hit.track_id]))


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
