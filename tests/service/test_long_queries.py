"""Long queries rank their source first (issue 19): excerpts of 20, 45 and 59 s cut at random off-grid
offsets from videos of 2 to 3.5 min, in a corpus that also holds, as videos of their own, the 10-s clips
those videos were made of (so every excerpt contains one or more of them whole). A placement is scored over
the query's frames, those outside the video counting 0: a clip matching its 16 frames of a 70-frame query
scores its share, never above the source matching all 70 as well.

The corpus (`long_media`) is unique by construction at 4 consecutive objects; the demo checkpoint never saw
its seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app

from .conftest import make_config, upload
from .long_media import LongCorpus, assert_moments_in_order, build, excerpt

SEED = 5151
GROUPS = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9), (10, 11, 12, 13))
CLIPS = (16, 21, 12)  # 160, 210 and 120 s (a group of 4 has 108 runs of 4: 110 events at most)
EXCERPTS = {20.0: 20, 45.0: 20, 59.0: 20}  # length (s) -> queries
pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def clips_corpus(tmp_path_factory: pytest.TempPathFactory) -> LongCorpus:
    return build(tmp_path_factory.mktemp("clips"), seed=SEED, groups=GROUPS, clips=CLIPS, order=4, index_clips=True)


@pytest.fixture(scope="module")
def clips_client(clips_corpus: LongCorpus) -> Iterator[TestClient]:
    with TestClient(create_app(make_config(clips_corpus.corpus)), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("length", sorted(EXCERPTS))
def test_a_long_excerpt_ranks_its_source_above_the_clips_it_contains(
    clips_client: TestClient, clips_corpus: LongCorpus, tmp_path: Path, length: float
) -> None:
    rng = np.random.default_rng([SEED, int(length)])
    first, misses = 0, []
    for q in range(EXCERPTS[length]):
        video = int(rng.integers(len(clips_corpus.videos)))
        start = float(rng.uniform(0.0, clips_corpus.durations[video] - length - 0.1))
        cut = excerpt(clips_corpus.videos[video], start, length, tmp_path / f"q{q}.wav")
        response = clips_client.post("/search/audio-to-video", files=upload(cut), data={"top_k": "5"})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert_moments_in_order(results)
        first += results[0]["video_id"] == video + 1
        if results[0]["video_id"] != video + 1:
            misses.append((video + 1, round(start, 2), [(r["video_id"], r["score"]) for r in results[:3]]))
    count = EXCERPTS[length]
    print(f"\n{length:.0f}-s excerpts: source first {first}/{count}; misses {misses}")
    assert first >= count - 1


@pytest.mark.parametrize("length", [90.0, 178.0])
def test_queries_up_to_the_longest_are_served_and_placed(
    clips_client: TestClient, clips_corpus: LongCorpus, tmp_path: Path, length: float
) -> None:
    """The longest query is 180 s (281 frames of 0.64 s): excerpts of 90 s and of ~180 s of the 210-s video are
    served (not 413), rank it first and place its first moment where they were cut. (A cut of these files lasts
    ~1% longer than asked: 178 s gives ~180 s, 180 s would give 182 s, refused as over the 1-s slack.)"""
    video = int(np.argmax(clips_corpus.durations))
    rng = np.random.default_rng([SEED, int(length), 7])
    for q in range(3):
        start = float(rng.uniform(0.0, clips_corpus.durations[video] - length - 0.1))
        cut = excerpt(clips_corpus.videos[video], start, length, tmp_path / f"long{q}.wav")
        response = clips_client.post("/search/audio-to-video", files=upload(cut), data={"top_k": "3"})
        assert response.status_code == 200, response.text
        body = response.json()
        frames = body["query"]["frames"]  # one per 0.64 s of the cut, 281 at most
        assert round(length / 0.64) <= frames <= 281, body["query"]
        assert_moments_in_order(body["results"])
        best = body["results"][0]
        assert best["video_id"] == video + 1, (start, [(r["video_id"], r["score"]) for r in body["results"]])
        stretch = max(0.0, frames * 0.64 - length)  # what the cut holds past its asked length, spread over it
        assert abs(best["moments"][0]["start"] - start) <= 0.64 + stretch / 2, (start, stretch, best["moments"][0])
