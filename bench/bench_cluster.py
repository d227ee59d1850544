"""Scatter overhead of the Ray-served shards against the single store (issue 22).

    python bench/bench_cluster.py --videos 600 --queries 60 --shards 3 --replicas 2

A seeded corpus (videos of 1 to 12 clips of T=16 frames, D=768, fp16 tokens like a real store) is written
into one token store and into S shards; a local Ray cluster of 3 nodes (`ray.cluster_utils.Cluster`, on
this one machine) serves the shards with R replicas each. Per query (16 frames, visual target, moments from
audio, the exhaustive scheme: exact): the single store's search in process, each shard's search in process,
and the Ray search (put the query, scatter, gather, merge). Reported: p50/p99 of each, and of the scatter
overhead = Ray search - the slowest shard's in-process search of that query (the round trip, the
serialisation of the hits, the merge and the waiting for a CPU: the 3 nodes share this machine's cores),
the merge alone, and each replica's resident memory. JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.cluster.corpus import ShardedStore  # noqa: E402
from indexer.cluster.scatter import SearchRequest, merge_hits  # noqa: E402
from indexer.search.stage import FirstStage  # noqa: E402
from indexer.store.token_store import TokenStore  # noqa: E402

T, D = 16, 768


def corpus(videos: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((512, D)) * np.linspace(2, 0.2, D)
    clips = rng.integers(1, 13, videos)
    tracks = np.repeat(np.arange(1, videos + 1), clips)
    events = centres[rng.integers(512, size=(len(tracks), T))]

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    audio = unit(events + 0.5 * rng.standard_normal(events.shape))
    visual = unit(events + 0.5 * rng.standard_normal(events.shape))
    ids = np.arange(len(tracks)) + 1
    return ids, tracks, audio, visual, np.full(len(tracks), T, dtype=np.int16)


def pct(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(values, 50)) * 1e3, 2),
        "p99_ms": round(float(np.percentile(values, 99)) * 1e3, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=600)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    from indexer.cluster.ray_serve import ClusterConfig, RaySearcher

    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    ids, tracks, audio, visual, valid = corpus(args.videos, 0)
    single, sharded = TokenStore(root / "single"), ShardedStore(root / "sharded", args.shards)
    for store in (single, sharded):
        store.add(ids, audio, visual, "bench", tracks=tracks, valid=valid)
    one, many = single.open(), sharded.open()
    assert one is not None and many is not None
    node = {"num_cpus": 1, "object_store_memory": 200 * 2**20, "resources": {"cavsync_shard": 8}}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="bench", log_to_driver=False)
    config = ClusterConfig(cluster.address, root / "sharded", args.shards, args.replicas, detached=False)
    searcher = RaySearcher.start(config)
    assert searcher.wait_ready(180)
    view = sharded.open(indexes=False)
    assert view is not None
    rng = np.random.default_rng(1)
    request = SearchRequest("visual", k=10, stage=FirstStage("exhaustive"), moment_from="audio")
    starts = rng.integers(0, len(ids), args.queries + 5)
    qs = [visual[s] + 0.05 * rng.standard_normal((T, D)).astype(np.float32) for s in starts]
    qs = [(q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32) for q in qs]
    for q in qs[:5]:  # warm: every replica opens its version, pages the tokens in
        for _ in range(args.replicas):
            searcher.search(view, q, request)
    rows: dict[str, list[float]] = {"single": [], "slowest_shard": [], "ray": [], "overhead": [], "merge": []}
    for q in qs[5:]:
        t0 = time.perf_counter()
        expected = request.run(one, q)
        t1 = time.perf_counter()
        per_shard, shard_s = [], []
        for part in many.parts:
            s0 = time.perf_counter()
            per_shard.append(request.run(part, q) if part is not None else [])
            shard_s.append(time.perf_counter() - s0)
        m0 = time.perf_counter()
        merged = merge_hits(per_shard, request.k)
        m1 = time.perf_counter()
        got = searcher.search(view, q, request)
        t2 = time.perf_counter()
        assert [h.track_id for h in got] == [h.track_id for h in expected] == [h.track_id for h in merged]
        rows["single"].append(t1 - t0)
        rows["slowest_shard"].append(max(shard_s))
        rows["merge"].append(m1 - m0)
        rows["ray"].append(t2 - m1)
        rows["overhead"].append((t2 - m1) - max(shard_s))
    rows["noop_scatter"] = []  # the bare round trip: one call to a replica of every shard, in parallel
    for _ in range(args.queries):
        n0 = time.perf_counter()
        ray.get([replicas[0].state.remote() for replicas in searcher.actors], timeout=30)
        rows["noop_scatter"].append(time.perf_counter() - n0)
    states = [ray.get(a.state.remote(), timeout=10) for replicas in searcher.actors for a in replicas]
    frames = int(one.tracks.length[one.tracks.live].sum())
    report = {
        "machine": platform.processor() or platform.machine(),
        "videos": args.videos,
        "frames": frames,
        "shards": args.shards,
        "replicas": args.replicas,
        "queries": args.queries,
        "latency": {name: pct(values) for name, values in rows.items()},
        "replica_rss_mb": [round(s["rss"] / 2**20, 1) for s in states],
        "token_bytes_per_frame_per_modality": int(one.tokens["visual"][0].dtype.itemsize * D),
    }
    print(json.dumps(report, indent=1))
    searcher.stop()
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
