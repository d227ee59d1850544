"""The structured corpus of bench_tracks.py (`bench/structured_corpus.py`) and the task truth over it
(`bench/relevance.py`), on small seeded corpora and hand-made cases."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_tracks  # noqa: E402  (a script folder, not a package)
from relevance import chance_ceiling, relevant_videos, significant, topical_precision  # noqa: E402
from structured_corpus import Copy, StructuredConfig, event_plan, make_topics, off_grid, structured_corpus  # noqa: E402

LENGTHS = [40, 600, 120, 16, 900, 300, 75, 450, 220, 500, 64, 800]


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_the_corpus_is_seeded() -> None:
    a, b, c = (structured_corpus(LENGTHS, seed=s) for s in (3, 3, 4))
    assert [len(t) for t in a.tracks] == LENGTHS
    assert all(np.array_equal(x, y) for x, y in zip(a.tracks, b.tracks, strict=True))
    assert np.array_equal(a.topics, b.topics) and a.copies == b.copies
    assert not np.array_equal(a.tracks[1], c.tracks[1])


def test_topics_hold_most_events() -> None:
    config = StructuredConfig()
    rng = np.random.default_rng(0)
    topics = make_topics(config, 5, rng)
    assert all(len(set(events.tolist())) == config.topic_events for events, _ in topics)
    for topic in topics:
        plan = event_plan(5000, topic, config.topic_share, config.events, rng)
        inside = np.isin(plan, topic[0]).mean()
        assert config.topic_share - 0.05 < inside < config.topic_share + 0.1  # + chance hits of the topic's events
    assert config.topics_for(119) == 12 and config.topics_for(5) == 2


def test_near_copies_repeat_their_source() -> None:
    corpus = structured_corpus(LENGTHS * 2, seed=7, config=StructuredConfig(copy_share=0.5))
    assert len(corpus.copies) == len(LENGTHS)
    targets = {c.target for c in corpus.copies}
    assert len(targets) == len(corpus.copies) and not targets & {c.source for c in corpus.copies}
    rng, lengths = np.random.default_rng(1), np.array([len(t) for t in corpus.tracks])
    for copy in corpus.copies:
        assert 16 <= copy.frames <= 469 and copy.source != copy.target
        assert copy.source_start != int(copy.source_start)  # off the frame grid
        source, target = corpus.tracks[copy.source], corpus.tracks[copy.target]
        held = _unit(target[copy.target_start : copy.target_start + copy.frames])
        aligned = (held * _unit(off_grid(source, copy.source_start, copy.frames))).sum(axis=1).mean()
        other = corpus.tracks[
            int(rng.choice([v for v in np.flatnonzero(lengths >= copy.frames) if v not in (copy.source, copy.target)]))
        ]
        at = rng.integers(0, len(other) - copy.frames + 1)
        chance = (held * _unit(other[at : at + copy.frames])).sum(axis=1).mean()  # another video's frames
        assert aligned > 0.8 and chance < 0.4, (aligned, chance)


def test_relevance_follows_the_copies_both_ways() -> None:
    copies = [Copy(source=0, source_start=100.5, target=1, target_start=20, frames=50)]
    assert relevant_videos(copies, 0, 110.0, 16) == {0, 1}  # inside the copied span of the source
    assert relevant_videos(copies, 1, 30.0, 16) == {1, 0}  # inside the copy, from its holder
    assert relevant_videos(copies, 0, 300.0, 16) == {0}  # elsewhere in the source
    assert relevant_videos(copies, 1, 0.0, 16) == {1}  # elsewhere in the holder
    assert relevant_videos(copies, 0, 90.5, 20) == {0, 1}  # overlap 10 of 20 frames: half
    assert relevant_videos(copies, 0, 90.0, 20) == {0}  # 9.5 of 20: less
    assert relevant_videos(copies, 2, 110.0, 16) == {2}
    twice = [*copies, Copy(source=0, source_start=90.0, target=2, target_start=0, frames=40)]
    assert relevant_videos(twice, 1, 30.0, 16) == {0, 1, 2}  # 1 and 2 hold one segment of 0


def test_relevance_on_a_generated_copy() -> None:
    corpus = structured_corpus(LENGTHS * 2, seed=7, config=StructuredConfig(copy_share=0.5))
    copy = max(corpus.copies, key=lambda c: c.frames)
    assert copy.target in relevant_videos(corpus.copies, copy.source, copy.source_start + 2, 8)
    assert copy.source in relevant_videos(corpus.copies, copy.target, copy.target_start + 2.3, 8)
    others = [c for c in corpus.copies if c.source == copy.source]
    start = copy.source_start + copy.frames + 1
    if all(start >= c.source_start + c.frames or start + 8 <= c.source_start for c in others):
        assert copy.target not in relevant_videos(corpus.copies, copy.source, start, 8)


def test_chance_ceiling_significant_and_topical_precision() -> None:
    scores = np.array([0.9, 0.7, 0.5, 0.4, 0.45, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.0])
    topics = np.array([0, 1, 0, 1, 0, 2, 2, 0, 1, 2, 0, 1])
    relevant = {0, 1}  # the source (topic 0) and a copy holder of topic 1
    ceiling = chance_ceiling(scores, relevant, topics, topic=0)
    assert ceiling == pytest.approx(0.4)  # video 3: not relevant, not of topic 0
    top10 = list(np.argsort(-scores, kind="stable")[:10])
    assert [int(v) for v in top10] == [0, 1, 2, 4, 3, 5, 6, 7, 8, 9]
    assert significant(top10, scores, ceiling) == [0, 1, 2, 4]
    assert topical_precision(top10, relevant, topics, topic=0) == pytest.approx(0.5)  # 0, 1, 2, 4, 7
    assert topical_precision([0, 2], relevant, topics, topic=0) == pytest.approx(0.2)  # missing hits count
    one_each = np.arange(len(scores))  # the random corpus: every video its own topic
    assert chance_ceiling(scores, relevant, one_each, topic=0) == pytest.approx(0.5)
    assert chance_ceiling(scores[:2], relevant, topics[:2], topic=0) == -np.inf


def test_truth_of_a_small_structured_corpus() -> None:
    corpus = structured_corpus(LENGTHS, seed=2, config=StructuredConfig(copy_share=0.3))
    queries = bench_tracks.make_queries(corpus.tracks, 8, 4, seed=5)
    for query in queries:
        query["topic"] = int(corpus.topics[query["video"]])
    truth = bench_tracks.truth_for(corpus, queries, 4)
    for i, query in enumerate(queries):
        assert query["video"] in truth["relevant"][i] and truth["top10"][i][0] == query["video"]
        assert truth["significant"][i][0] == query["video"]
        assert abs(truth["source_offset"][i] - query["start"]) <= 1
        assert 0.1 <= truth["exact_topical"][i] <= 1.0


def test_the_random_corpus_is_todays() -> None:
    corpus = bench_tracks.make_corpus("random", 20_000)
    lengths = bench_tracks.video_lengths(20_000, np.random.default_rng(20_000))
    today = bench_tracks.make_tracks(lengths, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(corpus.tracks, today, strict=True))
    assert corpus.copies == [] and np.array_equal(corpus.topics, np.arange(len(today)))


def test_every_fourth_query_is_cut_inside_a_copy() -> None:
    corpus = structured_corpus(LENGTHS * 2, seed=7, config=StructuredConfig(copy_share=0.5))
    queries = bench_tracks.make_queries(corpus.tracks, 8, 12, seed=3, copies=corpus.copies)
    for query in queries[3::4]:
        assert len(relevant_videos(corpus.copies, query["video"], query["start"], 8)) >= 2
    plain = bench_tracks.make_queries(corpus.tracks, 8, 12, seed=3)
    assert all(len(q["tokens"]) == 8 for q in plain) and plain[0]["video"] == queries[0]["video"]
