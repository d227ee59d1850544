"""A seeded corpus of videos (short and long, both modalities, a few without audio, a few stored twice) written
into one token store and into a sharded one, and the comparison of their answers."""

from __future__ import annotations

from itertools import product

import numpy as np

from indexer.cluster.corpus import ShardedStore
from indexer.search.moments import TrackHit
from indexer.store.token_store import TokenStore
from model.similarity import STRATEGIES

T, D = 16, 32
FIRST_ID = 1000


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def videos(count: int, seed: int = 0) -> list[tuple[int, np.ndarray, np.ndarray, bool]]:
    """(video id, audio (L, D), visual (L, D), has audio): 1-frame to 12-clip tracks around 24 event centres;
    every 25th video repeats the one before it (equal scores: the merge's ties), every 30th has no audio."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((24, D))
    lengths = np.where(rng.random(count) < 0.15, rng.integers(2 * T, 12 * T, count), rng.integers(4, 2 * T, count))
    out: list[tuple[int, np.ndarray, np.ndarray, bool]] = []
    for v, n in enumerate(lengths.tolist()):
        if v % 25 == 24:
            _, a, vis, has = out[-1]
            out.append((FIRST_ID + v, a, vis, has))
            continue
        events = centres[rng.integers(24, size=-(-n // 4))].repeat(4, axis=0)[:n]
        audio = _unit(events + 0.6 * rng.standard_normal((n, D)))
        visual = _unit(events + 0.6 * rng.standard_normal((n, D)))
        out.append((FIRST_ID + v, audio, visual, v % 30 != 29))
    return out


def add(store: TokenStore | ShardedStore, batch: list[tuple[int, np.ndarray, np.ndarray, bool]]) -> str | None:
    """Each video as its clips (rows of T frames, the last zero-padded, `valid` its real frames); clip ids
    video * 100 + clip."""
    ids, tracks, valid, audio, visual, present = [], [], [], [], [], []
    for video, a, v, has_audio in batch:
        for r in range(-(-len(a) // T)):
            ids.append(video * 100 + r)
            tracks.append(video)
            valid.append(min(T, len(a) - r * T))
            present.append((has_audio, True))
            for out, x in ((audio, a), (visual, v)):
                clip = np.zeros((T, D), np.float32)
                clip[: valid[-1]] = x[r * T : r * T + valid[-1]]
                out.append(clip)
    return store.add(
        np.array(ids),
        np.stack(audio),
        np.stack(visual),
        "m",
        np.array(present),
        tracks=np.array(tracks),
        valid=np.array(valid),
    )


def queries(count: int, seed: int = 1) -> list[np.ndarray]:
    """Query tokens of 3, T and 2T + 5 frames (shorter, as long as, longer than a clip)."""
    rng = np.random.default_rng(seed)
    return [_unit(rng.standard_normal((length, D))) for length in [3, T, 2 * T + 5] * count]


def cases() -> list[tuple[str, str, str | None]]:
    """(strategy, target, moment_from): every strategy, both targets, moments by the target or the own modality."""
    out: list[tuple[str, str, str | None]] = []
    for strategy, target, own in product(STRATEGIES, ("audio", "visual"), (False, True)):
        out.append((strategy, target, ("visual" if target == "audio" else "audio") if own else None))
    return out


def assert_same_hits(got: list[TrackHit], expected: list[TrackHit]) -> None:
    """The same tracks in the same order, scores to 1e-6, the same moments."""
    assert [h.track_id for h in got] == [h.track_id for h in expected]
    assert [h.clip_id for h in got] == [h.clip_id for h in expected]
    np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], atol=1e-6)
    for mine, theirs in zip(got, expected, strict=True):
        assert [(m.offset, m.start, m.end) for m in mine.moments] == [
            (m.offset, m.start, m.end) for m in theirs.moments
        ]
        np.testing.assert_allclose([m.score for m in mine.moments], [m.score for m in theirs.moments], atol=1e-6)
        matches = [[m.match or 0.0 for m in hit.moments] for hit in (mine, theirs)]
        np.testing.assert_allclose(matches[0], matches[1], atol=1e-6)
