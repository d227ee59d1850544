"""Token store + retrieval core at scale, on structured synthetic token corpora.

    python bench/bench_index.py --clips 10000 100000 --queries 200

A corpus is n clips x T=16 frames x D=768 L2-normalised tokens built like real embeddings: event
centres drawn from an anisotropic Gaussian (power-law spectrum, as learned embeddings have), each
clip a sequence of 1-4 events with a clip-level offset and per-frame noise, and a tenth of the clips
replaying another clip's events in another order (the hard negatives diagonal_mean separates).
Queries are noisy copies of corpus clips. (Since issue 12 the search is over tracks: each clip here
is a track of one clip; see bench_tracks.py for long videos. The clip sketches measured in
BENCHMARKS.md were removed after 0.1.0.) For each candidate scheme the bench reports search +
re-rank latency (query encoding excluded; one query at a time, as the API issues them) and
recall@10 against the exact brute-force diagonal_mean ranking over every clip; plus build time and
bytes per clip. The same tokens serve as both modalities (the store indexes both).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from indexer.search.ranking import search
from indexer.search.stage import FirstStage
from indexer.store.token_store import TokenStore, default_factory

T, D = 16, 768


def make_corpus(n: int, seed: int, events: int = 4096, decay: float = 1.0) -> np.ndarray:
    """(n, T, D) float16 clustered tokens; generated in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    scale = (1.0 + np.arange(D)) ** (-decay / 2)  # per-direction std: a power-law spectrum
    basis = np.linalg.qr(rng.standard_normal((D, D)))[0]
    centres = (rng.standard_normal((events, D)) * scale) @ basis.T
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, T, D), dtype=np.float16)
    for start in range(0, n, 4096):
        count = min(4096, n - start)
        plan = _event_plan(rng, count, events)  # (count, T) event of each frame
        offset = (rng.standard_normal((count, 1, D)) * scale) @ basis.T
        offset /= np.linalg.norm(offset, axis=-1, keepdims=True)
        noise = rng.standard_normal((count, T, D)).astype(np.float32) / np.sqrt(D)
        tokens = centres[plan] + 0.5 * offset + 0.6 * noise
        out[start : start + count] = tokens / np.linalg.norm(tokens, axis=-1, keepdims=True)
    return out


def _event_plan(rng: np.random.Generator, count: int, events: int) -> np.ndarray:
    plan = np.empty((count, T), dtype=np.int64)
    for i in range(count):
        if i and rng.random() < 0.1:  # replay the previous clip's events in another order
            order = rng.permutation(np.unique(plan[i - 1]))
        else:
            order = rng.choice(events, size=int(rng.integers(1, 5)), replace=False)
        cuts = np.sort(rng.choice(np.arange(1, T), size=len(order) - 1, replace=False))
        plan[i] = np.repeat(order, np.diff([0, *cuts, T]))
    return plan


def make_queries(corpus: np.ndarray, count: int, seed: int, noise: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(corpus), size=count, replace=False)
    q = corpus[picked].astype(np.float32) + noise * rng.standard_normal((count, T, D)).astype(np.float32) / np.sqrt(D)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def exact_top(corpus: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force diagonal_mean top-k clip indices (queries, k), in chunks of the corpus."""
    flat_q = queries.reshape(len(queries), -1)
    scores = np.empty((len(queries), len(corpus)), dtype=np.float32)
    for start in range(0, len(corpus), 8192):
        block = corpus[start : start + 8192].reshape(-1, T * D).astype(np.float32)
        scores[:, start : start + len(block)] = flat_q @ block.T / T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def measure(version, queries: np.ndarray, truth: np.ndarray, stage: FirstStage) -> dict:  # noqa: ANN001
    times, recalls = [], []
    search(version, queries[0], target="visual", k=10, stage=stage)  # warm-up
    for query, expected in zip(queries, truth, strict=True):
        start = time.perf_counter()
        hits = search(version, query, target="visual", k=10, stage=stage)
        times.append(time.perf_counter() - start)
        recalls.append(len({h.clip_id for h in hits} & set(expected.tolist())) / 10)
    ms = np.array(times) * 1000
    p50, p99 = np.percentile(ms, [50, 99]).round(2).tolist()
    return {**asdict(stage), "p50_ms": p50, "p99_ms": p99, "recall_at_10": round(float(np.mean(recalls)), 4)}


def folder_bytes(path: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def bench_size(
    n: int,
    queries: int,
    work: Path,
    factory: str | None = None,
    schemes: tuple[str, ...] = ("votes",),
) -> dict:
    t0 = time.perf_counter()
    corpus = make_corpus(n, seed=n)
    q = make_queries(corpus, queries, seed=1)
    truth = exact_top(corpus, q, 10)
    t1 = time.perf_counter()
    store = TokenStore(work / f"store{n}", factory=factory)
    store.add(np.arange(n), corpus, corpus, "bench")
    build_s = time.perf_counter() - t1
    version = store.open()
    root = work / f"store{n}"
    sizes = {
        "tokens_fp16": folder_bytes(root / "shards", "*.visual.npy"),
        "frame_index": folder_bytes(root / "versions", "visual.faiss"),
    }
    runs = []
    if "votes" in schemes:  # clips as one-clip tracks: per-frame votes for (clip, offset 0), exact re-rank
        runs += [measure(version, q, truth, FirstStage("votes", per_frame=c, hypotheses=c)) for c in (64, 256, 1024)]
    if n <= 20_000:
        runs.append(measure(version, q, truth, FirstStage("exhaustive")))
    return {
        "clips": n,
        "frames": T,
        "dim": D,
        "queries": queries,
        "frame_factory": factory or default_factory(n * T, D),
        "corpus_and_truth_s": round(t1 - t0, 1),
        "build_s_both_modalities": round(build_s, 1),
        "bytes_per_clip_per_modality": {k: round(v / n) for k, v in sizes.items()},
        "bytes_per_clip_on_disk_total": round(folder_bytes(root, "*") / n),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--factory", default=None, help="FAISS factory of the per-frame index (default: by size)")
    parser.add_argument("--schemes", nargs="+", default=["votes"], choices=["votes"])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        for n in args.clips:
            print(
                json.dumps(
                    bench_size(
                        n,
                        args.queries,
                        Path(work),
                        args.factory,
                        tuple(args.schemes),
                    )
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
