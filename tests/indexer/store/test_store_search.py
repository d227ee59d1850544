"""Token store versions and the retrieval core against a brute-force numpy implementation."""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.search.ranking import search
from indexer.search.stage import FirstStage
from indexer.store import build
from indexer.store.token_store import StoreError, TokenStore
from model.similarity import STRATEGIES

T, D = 8, 16
SCHEMES = ("exhaustive", "votes")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _corpus(n: int, seed: int = 0, clusters: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Clustered tokens (centres + noise), like real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, D))
    pick = rng.integers(clusters, size=(n, T))
    audio = _unit(centres[pick] + 0.4 * rng.standard_normal((n, T, D)))
    visual = _unit(centres[pick] + 0.4 * rng.standard_normal((n, T, D)))
    return audio, visual


def _brute(query: np.ndarray, tokens: np.ndarray, strategy: str) -> np.ndarray:
    """Best alignment score per clip, the slow and obvious way (float64); a clip shorter than the query is
    zero-padded to the query's length at its place (the query's frames outside it count 0)."""
    q, c = query.astype(np.float64), tokens.astype(np.float64)
    lq, lt = q.shape[0], c.shape[1]
    scores = []
    for clip in c:
        best = -np.inf
        if lq <= lt:
            pairs = [(q, clip[o : o + lq]) for o in range(lt - lq + 1)]
        else:
            pairs = [(q, np.pad(clip, ((o, lq - lt - o), (0, 0)))) for o in range(lq - lt + 1)]
        for a, b in pairs:
            cos = a @ b.T
            value = {
                "diagonal_mean": np.diag(cos).mean(),
                "diagonal_max": np.diag(cos).max(),
                "mean": cos.mean(),
                "max": cos.max(),
            }[strategy]
            best = max(best, value)
        scores.append(best)
    return np.array(scores)


@pytest.fixture()
def store(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "index", dtype="float32")


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("length", [T, 3, 12])
def test_search_equals_brute_force(store: TokenStore, strategy: str, length: int) -> None:
    audio, visual = _corpus(60)
    store.add(np.arange(100, 160), audio, visual, "m")
    query = _unit(np.random.default_rng(1).standard_normal((length, D)))
    hits = search(store.open(), query, target="visual", k=10, strategy=strategy)
    expected = _brute(query, visual, strategy)
    order = np.argsort(-expected, kind="stable")[:10]
    assert [h.clip_id for h in hits] == (order + 100).tolist()
    assert np.allclose([h.score for h in hits], expected[order], atol=1e-5)


def test_sliding_query_finds_the_moment(store: TokenStore) -> None:
    audio, visual = _corpus(40)
    store.add(np.arange(40), audio, visual, "m")
    hits = search(store.open(), audio[17, 2:5], target="audio", k=1)
    assert (
        hits[0].clip_id == 17
        and hits[0].moments[0].offset == 2
        and np.allclose(hits[0].moments[0].frame_scores, 1.0, atol=1e-5)
    )


def test_faiss_candidates_reach_exact_ranking(tmp_path: Path) -> None:
    """With enough votes (per-frame: about one cluster's worth of frames) the voted (track, offset)
    hypotheses rank as the exhaustive search. How many a real corpus needs is the benchmark's question."""
    store = TokenStore(tmp_path / "big", dtype="float16")
    audio, visual = _corpus(3000, seed=2, clusters=200)
    store.add(np.arange(3000), audio, visual, "m")
    version = store.open()
    assert search(version, audio[0], target="visual", k=1)[0].clip_id == 0  # "auto": votes at this size
    rng = np.random.default_rng(3)
    agree = 0
    for q in rng.integers(3000, size=20):
        query = _unit(audio[q] + 0.2 * rng.standard_normal((T, D)))
        exact = [h.clip_id for h in search(version, query, target="visual", k=10, stage=FirstStage("exhaustive"))]
        fast = search(version, query, target="visual", k=10, stage=FirstStage("votes", per_frame=4096, hypotheses=1000))
        agree += len(set(exact) & {h.clip_id for h in fast})
    assert agree / 200 >= 0.99


def test_unused_shards_are_deleted(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "gc", dtype="float32", keep_versions=2)
    audio, visual = _corpus(30)
    for first in (0, 10, 20):
        store.add(np.arange(first, first + 10), audio[first : first + 10], visual[first : first + 10], "m")
    store.delete([3])
    (tmp_path / "gc" / "shards" / ".sdead.audio.npy.123.tmp").write_bytes(b"left by a killed writer")
    store.compact()
    store.add(np.array([3]), audio[3:4], visual[3:4], "m")  # v6: only v5 and v6 are kept, both after compact
    shards = {p.name.split(".", 1)[0] for p in (tmp_path / "gc" / "shards").iterdir()}
    assert shards == {s["name"] for s in store.open().manifest.segments} and len(shards) == 2
    assert [h.clip_id for h in search(store.open(), audio[7], target="audio", k=1)] == [7]


def test_add_delete_compact(store: TokenStore) -> None:
    audio, visual = _corpus(30)
    assert store.open() is None
    store.add(np.arange(10), audio[:10], visual[:10], "m")
    store.add(np.arange(10, 30), audio[10:], visual[10:], "m")  # no rebuild: a second shard
    version = store.open()
    assert len(version) == 30 and len(version.manifest.segments) == 2 and version.index["audio"].ntotal == 30 * T
    assert search(version, audio[12], target="audio", k=1)[0].clip_id == 12
    store.delete([12, 3])
    after = store.open()
    assert len(after) == 28 and after.index["audio"].ntotal == 28 * T
    for scheme in SCHEMES:
        ids = [h.clip_id for h in search(after, audio[12], target="audio", k=30, stage=FirstStage(scheme))]
        assert 12 not in ids and 3 not in ids
    assert search(version, audio[12], target="audio", k=1)[0].clip_id == 12  # the old version a reader holds is intact
    store.compact()
    compacted = store.open()
    assert len(compacted.manifest.segments) == 1 and compacted.manifest.deleted == [] and len(compacted) == 28
    assert [h.clip_id for h in search(compacted, audio[5], target="audio", k=5)] == [
        h.clip_id for h in search(after, audio[5], target="audio", k=5)
    ]
    store.delete([5])
    store.add(np.array([5]), audio[5:6], visual[5:6], "m")  # re-indexing a deleted clip brings it back, once
    ids = [h.clip_id for h in search(store.open(), audio[5], target="audio", k=30)]
    assert ids[0] == 5 and ids.count(5) == 1
    assert store.add(np.array([5]), audio[5:6], visual[5:6], "m") is None  # already live: nothing to do


def _centroids(index: faiss.Index) -> np.ndarray:
    """The coarse centroids of an IVF index, (nlist, D)."""
    quantizer = faiss.extract_index_ivf(index).quantizer
    return quantizer.reconstruct_n(0, quantizer.ntotal)


def test_a_store_grown_from_a_small_batch_rebuilds_its_indexes(tmp_path: Path) -> None:
    """IVF indexes trained on a first batch of 8 clips (64 frames) are retrained once the store has grown
    4-fold, over the live clips only; between rebuilds the indexes grow without retraining."""
    store = TokenStore(tmp_path / "grow", dtype="float32", factory="IVF2,Flat")
    audio, visual = _corpus(60, seed=4)
    store.add(np.arange(8), audio[:8], visual[:8], "m")
    first = _centroids(store.open().index["audio"])
    store.add(np.arange(8, 30), audio[8:30], visual[8:30], "m")  # 30 < 4 x 8: grown, not retrained
    store.delete([2, 20])
    grown = store.open()
    assert grown.manifest.built_rows == 8 and np.array_equal(_centroids(grown.index["audio"]), first)
    store.add(np.arange(30, 40), audio[30:40], visual[30:40], "m")  # 38 live >= 32: rebuilt
    rebuilt = store.open()
    live = [i for i in range(40) if i not in (2, 20)]
    assert rebuilt.manifest.built_rows == 38 and len(rebuilt) == 38
    assert not np.allclose(_centroids(rebuilt.index["audio"]), first, atol=1e-3)
    for modality, tokens in (("audio", audio), ("visual", visual)):
        fresh = build.build(lambda rows, t=tokens[live]: t[rows], np.arange(38), T, D, "IVF2,Flat")
        assert np.allclose(_centroids(rebuilt.index[modality]), _centroids(fresh), atol=1e-5)
        assert rebuilt.index[modality].ntotal == 38 * T
    for clip in (0, 25, 39):
        for scheme in SCHEMES:
            assert search(rebuilt, visual[clip], target="visual", k=1, stage=FirstStage(scheme))[0].clip_id == clip
    assert 20 not in [h.clip_id for h in search(rebuilt, audio[20], target="audio", k=38, stage=FirstStage("votes"))]
    store.add(np.arange(40, 60), audio[40:60], visual[40:60], "m")  # 58 < 4 x 38: grown again
    assert store.open().manifest.built_rows == 38


def test_rebuilds_can_be_left_to_compact(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "never", dtype="float32", rebuild_growth=math.inf)
    audio, visual = _corpus(40, seed=5)
    for first, last in ((0, 4), (4, 20), (20, 40)):
        store.add(np.arange(first, last), audio[first:last], visual[first:last], "m")
    assert store.open().manifest.built_rows == 4 and len(store.open()) == 40
    store.compact()
    assert store.open().manifest.built_rows == 40


def test_rebuilds_read_the_store_a_chunk_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 7 clips and training samples of 16 clips (IVF lists asking for more get more) build the
    same indexes as one pass would: every vector once, the exhaustive ranking reached, compact's copy exact."""
    monkeypatch.setattr(build, "CHUNK_CLIPS", 7)
    monkeypatch.setattr(build, "SAMPLE_CLIPS", 16)
    assert build.sample_size(5000, T, "IVF100,PQ4") == 100 * 100 // T
    assert build.sample_size(5000, T, "IDMap2,Flat") == 16 and build.sample_size(9, T, "IVF100,PQ4") == 9
    store = TokenStore(tmp_path / "chunks", dtype="float32", factory="IVF2,Flat")
    audio, visual = _corpus(50, seed=6)
    store.add(np.arange(50), audio, visual, "m")
    store.delete([10, 11])
    store.compact()
    version = store.open()
    assert version.manifest.factory == "IVF2,Flat" and version.index["visual"].ntotal == 48 * T
    assert np.array_equal(version.clip_ids, np.delete(np.arange(50), [10, 11]))
    assert np.array_equal(version.gather("visual", np.arange(48)), np.delete(visual, [10, 11], axis=0))
    for clip in (0, 12, 49):
        exhaustive = [
            h.clip_id for h in search(version, visual[clip], target="visual", k=5, stage=FirstStage("exhaustive"))
        ]
        voted = search(
            version, visual[clip], target="visual", k=5, stage=FirstStage("votes", per_frame=48 * T, hypotheses=999)
        )
        assert [h.clip_id for h in voted] == exhaustive


def test_id_and_token_readers_do_not_read_the_faiss_indexes(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "lazy", dtype="float32")
    audio, visual = _corpus(6)
    store.add(np.arange(6), audio, visual, "m")
    for path in (tmp_path / "lazy" / "versions").glob("*/*.faiss"):
        path.unlink()  # what a reader that needs no index would not notice
    version = store.open(indexes=False)
    assert np.array_equal(version.gather("audio", version.rows_of([4])), audio[4:5])
    with pytest.raises(RuntimeError):  # faiss's error for a missing file: readers that search read them at open
        store.open()


def test_wrong_shapes_and_models_are_refused(store: TokenStore) -> None:
    audio, visual = _corpus(4)
    with pytest.raises(StoreError, match="tokens must be"):
        store.add(np.arange(3), audio, visual, "m")
    store.add(np.arange(4), audio, visual, "m")
    with pytest.raises(StoreError, match="another index directory"):
        store.add(np.arange(4), audio, visual, "other-model")
    with pytest.raises(ValueError, match="query tokens must be"):
        search(store.open(), np.zeros((T, D + 1), np.float32), target="audio")


def _writer(root: str, rounds: int) -> None:
    store = TokenStore(root, dtype="float32")
    for r in range(rounds):
        audio, visual = _corpus(20, seed=100 + r)
        store.add(np.arange(1000 + 20 * r, 1020 + 20 * r), audio, visual, "m")


@pytest.mark.slow
@pytest.mark.integration
def test_searches_during_commits_never_fail_or_see_partial_versions(tmp_path: Path) -> None:
    root = tmp_path / "live"
    store = TokenStore(root, dtype="float32")
    audio, visual = _corpus(20)
    store.add(np.arange(20), audio, visual, "m")
    writer = mp.get_context("spawn").Process(target=_writer, args=(str(root), 15))
    writer.start()
    searches, seen = 0, set()
    deadline = time.monotonic() + 120
    while (writer.is_alive() or searches == 0) and time.monotonic() < deadline:
        version = store.open()
        assert len(version.clip_ids) == version.manifest.rows == version.index["visual"].ntotal // T
        hits = search(version, audio[3], target="audio", k=3)
        assert hits[0].clip_id == 3
        searches += 1
        seen.add(version.name)
    writer.join(timeout=60)
    assert writer.exitcode == 0 and searches > 5 and len(seen) > 2
    assert len(store.open()) == 20 + 15 * 20


def test_clips_without_a_modality_are_not_searched_in_it(store: TokenStore) -> None:
    audio, visual = _corpus(10)
    present = np.ones((10, 2), dtype=bool)
    present[4, 1] = False  # clip 4: audio only
    store.add(np.arange(10), audio, visual, "m", present=present)
    version = store.open()
    assert version.index["visual"].ntotal == 9 * T and version.index["audio"].ntotal == 10 * T
    for scheme in SCHEMES:
        assert 4 not in [h.clip_id for h in search(version, visual[4], target="visual", k=10, stage=FirstStage(scheme))]
        assert search(version, audio[4], target="audio", k=1, stage=FirstStage(scheme))[0].clip_id == 4


@pytest.mark.gpu
def test_faiss_gpu_serves_the_same_results(tmp_path: Path) -> None:
    """With faiss-gpu and a GPU, readers search GPU copies of the indexes (writers keep CPU ones)."""
    from indexer.store.build import gpu_count

    if gpu_count() == 0:
        pytest.skip("faiss-cpu build: no GPU index support")
    store = TokenStore(tmp_path / "gpu", dtype="float32", factory="IDMap2,Flat")  # fast-scan IVF has no GPU index
    audio, visual = _corpus(3000, seed=5, clusters=200)
    store.add(np.arange(3000), audio, visual, "m")
    on_gpu, on_cpu = store.open(), store.open(gpu=False)
    for scheme in ("exhaustive", "votes"):
        for q in range(0, 3000, 300):
            fast = [h.clip_id for h in search(on_gpu, audio[q], target="visual", k=10, stage=FirstStage(scheme))]
            slow = [h.clip_id for h in search(on_cpu, audio[q], target="visual", k=10, stage=FirstStage(scheme))]
            assert fast == slow
    store.add(np.array([5000]), audio[:1], visual[:1], "m")  # the writer works beside GPU readers
    assert len(store.open()) == 3001


def test_a_modality_no_clip_has_gets_an_empty_index(tmp_path: Path) -> None:
    """Rebuilding with an IVF factory when no clip has audio: the audio index is empty and exact, the
    visual one trained as asked."""
    store = TokenStore(tmp_path / "visual-only", dtype="float32", factory="IVF2,Flat")
    audio, visual = _corpus(40, seed=8)
    present = np.zeros((40, 2), dtype=bool)
    present[:, 1] = True
    store.add(np.arange(40), audio, visual, "m", present)
    version = store.open()
    assert version.index["audio"].ntotal == 0 and version.index["visual"].ntotal == 40 * T
    assert search(version, visual[3], target="visual", k=1)[0].clip_id == 3
    assert search(version, audio[3], target="audio", k=1) == []
