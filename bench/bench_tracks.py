"""Track search at scale: synthetic token tracks, off-grid queries of 2 to 180 s, against the exact
brute-force sliding search over every track.

    python bench/bench_tracks.py --frames 1600000 --queries 40 [--corpus structured|random] [--store DIR]

Two corpora, one code path (`--corpus`): *structured* (the default, issue 30: videos of topics, a fifth of them
holding near-copies of other videos' segments; `structured_corpus.py` says how) and *random* (below). The
random corpus is videos of 10 s to 2 h (lengths log-uniform, frame k at k x 0.64 s) totalling `--frames`
per-frame tokens (1.6M = 100k clip-equivalents of T=16), D=768, built like bench_index.py's: event
centres from an anisotropic Gaussian (power-law spectrum), each video a sequence of events of 2 to 12
frames with a video-level offset and per-frame noise, and a tenth of the videos replaying another
video's events in another order (reordered twins). A query of n seconds is round(n / 0.64) frames cut
at a uniformly random off-grid offset: each query frame interpolates two consecutive track frames
(the query's grid falls between the track's), plus noise; on the structured corpus every 4th query is cut
inside a near-copy (from its source or its holder). Truth: the exact diagonal_mean of every
query at every frame offset of every track (a batched brute force, independent of the retrieval
core; a track shorter than the query scored over the query's frames), each track shown at the centre of
its run of offsets within TIE_TOLERANCE of its best (the score a search shows: its first moment's), the
top-10 videos by that score, and the offset of its first video (moments picked as the core does). Beside it
the task truth of `relevance.py`, from the corpus's construction: the relevant videos (the source and its
near-copies), the chance ceiling, the significant videos of the exact top 10, topical precision@10.
Reported per query length and candidate scheme (votes at per_frame:hypotheses, the scan, or the windows
experiment of `window_stage.py`): recall@1 and @10 of videos against the truth, recall_clear (of the
truth's top 10, only the videos scoring CLEAR_MARGIN above its 11th: the ones not decided by
near-ties), the first moment's start error against the truth's offset; first_hit_relevant (share of
queries), relevant_recall_at_10, topical_precision_at_10 (the search's, and the exact top 10's),
significant_recall (pooled), moment_within_1_frame (the first moment against the exact best offset in the
source, for the queries whose first hit is their source), p50/p99 latency (one query at a time, encoding
excluded); build time and bytes per frame. `--store` keeps the built store in DIR and reuses it on the next
run of the same --frames and --corpus (the corpus is seeded by them; a store built for another is refused).
The tokens are stored as the visual modality only (the audio index is not built: the same code path, half
the build).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import window_stage
from relevance import chance_ceiling, relevant_videos, significant, topical_precision
from structured_corpus import Copy, Corpus, event_space, random_corpus, render, structured_corpus

from indexer.search.moments import TrackHit
from indexer.search.ranking import search
from indexer.search.sliding import pick_moments, score_offsets
from indexer.search.stage import FirstStage
from indexer.store.token_store import TokenStore
from model.similarity import TIE_TOLERANCE

T, D, FRAME_S = 16, 768, 0.64
QUERY_SECONDS = (2, 5, 10, 30, 60, 180)
ONE_ADD_UP_TO = 1_600_000  # frames of a corpus written in one add; a larger one in adds of ADD_FRAMES (`build_store`)
ADD_FRAMES = 400_000  # each add converts its frames to float32 for the index (1.6M at once: 10 GB more, OOM at 6.4M)
CLEAR_MARGIN = 0.01  # "recall_clear": of the truth's top 10, the videos scoring this much above its 11th


def video_lengths(total: int, rng: np.random.Generator) -> list[int]:
    """Frames per video, log-uniform between 10 s (16 frames) and 2 h (11,250), summing to `total`."""
    lengths: list[int] = []
    while sum(lengths) < total:
        lengths.append(int(np.exp(rng.uniform(np.log(16), np.log(11_250)))))
    lengths[-1] -= sum(lengths) - total
    if lengths[-1] < 16:
        lengths[-2] += lengths.pop()
    return lengths


def make_tracks(lengths: list[int], seed: int, events: int = 4096, decay: float = 1.0) -> list[np.ndarray]:
    """One (L, D) float16 track per video (see the module)."""
    rng = np.random.default_rng(seed)
    centres, scale, basis = event_space(rng, events, decay)
    tracks, previous = [], None
    for length in lengths:
        if previous is not None and rng.random() < 0.1:  # a reordered twin of the previous video's events
            names, runs = previous
            order = rng.permutation(len(names))
            names, runs = names[order], runs[order]
        else:
            runs = rng.integers(2, 13, size=length // 2 + 1)
            names = rng.integers(events, size=len(runs))
        plan = np.resize(np.repeat(names, runs), length)  # a twin of another length wraps its plan
        previous = (names, runs)
        tracks.append(render(plan, centres, scale, basis, rng))
    return tracks


def make_queries(
    tracks: list[np.ndarray], frames: int, count: int, seed: int, noise: float = 0.5, copies: Sequence[Copy] = ()
) -> list[dict]:
    """Off-grid excerpts of `frames` frames: frame k = (1 - a) x track[o + k] + a x track[o + k + 1] + noise; every
    4th cut inside a near-copy of `copies` long enough (its source or its holder, by a coin), the others anywhere."""
    rng = np.random.default_rng(seed)
    long_enough = [v for v, t in enumerate(tracks) if len(t) > frames + 1]
    copied = [c for c in copies if c.frames >= frames + 2]
    out = []
    for i in range(count):
        if copied and i % 4 == 3:
            copy = copied[int(rng.integers(len(copied)))]
            holder = bool(rng.random() < 0.5)
            video, first = (
                (copy.target, copy.target_start) if holder else (copy.source, int(np.ceil(copy.source_start)))
            )
            start = first + int(rng.integers(0, copy.frames - frames - 1))
        else:
            video = int(rng.choice(long_enough))
            start = int(rng.integers(0, len(tracks[video]) - frames - 1))
        track, shift = tracks[video].astype(np.float32), float(rng.uniform(0, 1))
        q = (1 - shift) * track[start : start + frames] + shift * track[start + 1 : start + frames + 1]
        q += noise * rng.standard_normal(q.shape).astype(np.float32) / np.sqrt(D)
        out.append({"video": video, "start": start + shift, "tokens": q / np.linalg.norm(q, axis=1, keepdims=True)})
    return out


def exact_scores(tracks: list[np.ndarray], queries: np.ndarray, chunk_frames: int = 32_768) -> np.ndarray:
    """Brute force: (n, V) each track's score for each query (n, Q, D) by the product's rule: the diagonal_mean
    at every offset, then the centre of the run of offsets within TIE_TOLERANCE of the best (`_shown`)."""
    count, length, _ = queries.shape
    flat_q = queries.reshape(-1, D).T  # (D, n * Q)
    best = np.full((count, len(tracks)), -np.inf, dtype=np.float32)
    group: list[int] = []
    for v in range(len(tracks) + 1):
        if v < len(tracks) and (not group or sum(len(tracks[g]) for g in group) + len(tracks[v]) <= chunk_frames):
            group.append(v)
            continue
        frames = np.concatenate([tracks[g] for g in group]).astype(np.float32)
        pairs = (frames @ flat_q).reshape(len(frames), count, length)  # (F, n, Q) cosines
        start = 0
        for g in group:
            best[:, g] = _shown(_track_curve(pairs[start : start + len(tracks[g])], length))
            start += len(tracks[g])
        group = [v] if v < len(tracks) else []
    return best


def _track_curve(pairs: np.ndarray, length: int) -> np.ndarray:
    """pairs (L, n, Q) of one track -> (offsets, n): the mean over the query's Q frames of the aligned cosines
    at each offset, ascending (0 .. L - Q; a track shorter than the query: L - Q .. 0, its frames outside
    the track counting 0)."""
    frames = len(pairs)
    total = np.zeros((abs(frames - length) + 1, pairs.shape[1]), dtype=np.float32)
    for j in range(min(length, frames)):
        if length <= frames:  # query frame j on track frame o + j, o = 0 .. L - Q
            total += pairs[j : j + frames - length + 1, :, j]
        else:  # track frame j on query frame s + j, i.e. offset o = -s, s = 0 .. Q - L
            total += pairs[j, :, j : j + length - frames + 1].T
    curve = total / length
    return curve if length <= frames else curve[::-1]


def _shown(curve: np.ndarray) -> np.ndarray:
    """(offsets, n) -> (n,) the score a search shows for the track (its first moment's): at the centre of the
    run of consecutive offsets within TIE_TOLERANCE of the best one (indexer.search.sliding's documented rule)."""
    out = np.empty(curve.shape[1], dtype=np.float32)
    for i in range(curve.shape[1]):
        column = curve[:, i]
        best = int(np.argmax(column))
        below = np.flatnonzero(column < column[best] - TIE_TOLERANCE)
        first = int(below[below < best].max()) + 1 if (below < best).any() else 0
        last = int(below[below > best].min()) - 1 if (below > best).any() else len(column) - 1
        out[i] = column[(first + last + 1) // 2]
    return out


def build_store(tracks: list[np.ndarray], root: Path) -> tuple[TokenStore, float]:
    """The store of `tracks` (the visual modality), in one add up to ONE_ADD_UP_TO frames, else ADD_FRAMES at a
    time: a larger corpus grows the store as a user's would (indexes built on the first add, grown, rebuilt at
    REBUILD_GROWTH x), its tokens never held twice, then is compacted as a user would (`cavsync compact`: one
    segment, the indexes built for the whole size)."""
    store = TokenStore(root, dtype="float16")
    started, first_row, part, held = time.perf_counter(), 0, [], 0  # held: frames of `part`
    most = ADD_FRAMES if sum(map(len, tracks)) > ONE_ADD_UP_TO else ONE_ADD_UP_TO
    for video in range(len(tracks) + 1):
        if video == len(tracks) or (part and held + len(tracks[video]) > most):
            first_row = add_videos(store, tracks, part, first_row)
            part, held = [], 0
        if video < len(tracks):
            part.append(video)
            held += len(tracks[video])
    if most < ONE_ADD_UP_TO:
        store.compact()  # one segment, the indexes built for the whole size (`cavsync compact`)
    return store, time.perf_counter() - started


def add_videos(store: TokenStore, tracks: list[np.ndarray], videos: list[int], first_row: int) -> int:
    """Add `videos` (their tracks, T frames a row) as rows first_row..; the next free row."""
    rows = [-(-len(tracks[v]) // T) for v in videos]
    tokens = np.zeros((sum(rows), T, D), dtype=np.float16)
    ids = np.arange(first_row, first_row + sum(rows))
    owners, valid = np.repeat(np.array(videos), rows), np.empty(sum(rows), np.int16)
    at = 0
    for video, count in zip(videos, rows, strict=True):
        tokens[at : at + count].reshape(-1, D)[: len(tracks[video])] = tracks[video]
        valid[at : at + count] = T
        valid[at + count - 1] = len(tracks[video]) - (count - 1) * T
        at += count
    present = np.zeros((len(ids), 2), dtype=bool)
    present[:, 1] = True  # the visual modality only
    store.add(ids, tokens, tokens, "bench", present, tracks=owners, valid=valid, frame_s=FRAME_S)
    return first_row + sum(rows)


def searcher(version, setting: str, root: Path) -> Callable[[np.ndarray], list[TrackHit]]:  # noqa: ANN001
    """The search a setting names: the product's (auto, scan, votes per_frame:hypotheses) or the windows
    experiment (`window_stage`, its index built once under the store)."""
    if setting == "windows":
        index = window_stage.window_index(version, "visual", root / "bench-windows")
        return partial(window_stage.search_windows, version, index, target="visual", k=10, moments=1)
    return partial(search, version, target="visual", k=10, moments=1, stage=stage_of(setting))


def measure(run: Callable[[np.ndarray], list[TrackHit]], queries: list[dict], truth: dict) -> dict:
    times, at1, at10, errors, clear, task = [], [], [], [], [], []
    run(queries[0]["tokens"])  # warm-up
    for i, query in enumerate(queries):
        started = time.perf_counter()
        hits = run(query["tokens"])
        times.append(time.perf_counter() - started)
        if i in truth["top10"]:
            expected = truth["top10"][i]
            found = [h.track_id for h in hits]
            at1.append(bool(found) and found[0] == expected[0])
            at10.append(len(set(found) & set(expected)) / len(expected))
            clear += [v in found for v in truth["clear"][i]]
            if found and found[0] == expected[0]:
                errors.append(abs(hits[0].moments[0].offset - truth["offset"][i]) * FRAME_S)
            task.append(task_measures(hits, query, truth, i))
    ms = np.array(times) * 1000
    p50, p99 = np.percentile(ms, [50, 99]).round(2).tolist()
    errors_s = np.array(errors) if errors else np.zeros(1)
    return {
        **task_summary(task),
        "recall_at_1": round(float(np.mean(at1)), 4),
        "recall_at_10": round(float(np.mean(at10)), 4),
        "recall_clear": round(float(np.mean(clear)), 4) if clear else None,
        "clear_per_query": round(len(clear) / max(1, len(at1)), 2),
        "moment_within_0.64s": round(float(np.mean(errors_s <= FRAME_S + 1e-9)), 4),
        "moment_error_p50_s": round(float(np.median(errors_s)), 3),
        "p50_ms": p50,
        "p99_ms": p99,
        "queries_timed": len(queries),
        "queries_with_truth": len(at1),
        "load": os.getloadavg()[0],
    }


def task_measures(hits: list[TrackHit], query: dict, truth: dict, i: int) -> dict:
    """One query's task measures (relevance.py) for a search's `hits`."""
    found = [h.track_id for h in hits]
    relevant, topic = truth["relevant"][i], query["topic"]
    source_first = bool(found) and found[0] == query["video"]
    return {
        "first_relevant": bool(found) and found[0] in relevant,
        "relevant": len(relevant),
        "relevant_recall": len(relevant & set(found[:10])) / min(10, len(relevant)),
        "topical": topical_precision(found, relevant, truth["topics"], topic),
        "exact_topical": truth["exact_topical"][i],
        "significant": [v in found for v in truth["significant"][i]],
        "moment": abs(hits[0].moments[0].offset - truth["source_offset"][i]) <= 1 if source_first else None,
    }


def task_summary(task: list[dict]) -> dict:
    """The task measures averaged over the queries (significant recall pooled over their videos)."""
    pooled = [s for t in task for s in t["significant"]]
    moments = [t["moment"] for t in task if t["moment"] is not None]
    return {
        "first_hit_relevant": round(float(np.mean([t["first_relevant"] for t in task])), 4),
        "relevant_recall_at_10": round(float(np.mean([t["relevant_recall"] for t in task])), 4),
        "topical_precision_at_10": round(float(np.mean([t["topical"] for t in task])), 4),
        "exact_topical_precision_at_10": round(float(np.mean([t["exact_topical"] for t in task])), 4),
        "significant_recall": round(float(np.mean(pooled)), 4) if pooled else None,
        "significant_per_query": round(len(pooled) / max(1, len(task)), 2),
        "relevant_per_query": round(float(np.mean([t["relevant"] for t in task])), 2),
        "moment_within_1_frame": round(float(np.mean(moments)), 4) if moments else None,
        "queries_source_first": len(moments),
    }


def truth_for(corpus: Corpus, queries: list[dict], count: int) -> dict:
    """For the first `count` queries: the exact top-10 videos and the first video's best offset, the source's
    best offset, and the task truth (relevance.py)."""
    tracks = corpus.tracks
    block = np.stack([q["tokens"] for q in queries[:count]])
    best = exact_scores(tracks, block)
    top10 = {i: np.argsort(-best[i], kind="stable")[:10].tolist() for i in range(count)}
    eleventh = {i: float(np.sort(best[i])[-11]) if best.shape[1] > 10 else -np.inf for i in range(count)}
    clear = {i: [v for v in top10[i] if best[i, v] >= eleventh[i] + CLEAR_MARGIN] for i in range(count)}
    relevant = {
        i: relevant_videos(corpus.copies, q["video"], q["start"], len(q["tokens"]))
        for i, q in enumerate(queries[:count])
    }
    ceiling = {i: chance_ceiling(best[i], relevant[i], corpus.topics, queries[i]["topic"]) for i in range(count)}
    offsets = {i: best_offset(block[i], tracks[top10[i][0]]) for i in range(count)}
    return {
        "top10": top10,
        "clear": clear,
        "offset": offsets,
        "source_offset": {  # the exact top 1 is mostly the source: its offset is known already
            i: offsets[i] if top10[i][0] == queries[i]["video"] else best_offset(block[i], tracks[queries[i]["video"]])
            for i in range(count)
        },
        "relevant": relevant,
        "significant": {i: significant(top10[i], best[i], ceiling[i]) for i in range(count)},
        "exact_topical": {
            i: topical_precision(top10[i], relevant[i], corpus.topics, queries[i]["topic"]) for i in range(count)
        },
        "topics": corpus.topics,
    }


def queries_and_truth(root: Path | None, corpus: Callable[[], Corpus], seconds: int, args: argparse.Namespace) -> tuple:
    """The queries of `seconds` and their truth (`truth_for`), kept beside a reused store (`--store`): both are
    seeded by the corpus, the length and the counts, so a rerun reads them back instead of making the corpus and the
    brute force (minutes at 1.6M, most of an hour at 6.4M) and times the searches alone."""
    count, timed, length = args.queries, max(args.timed, args.queries), round(seconds / FRAME_S)
    path = root / f"case-{length}f-{count}of{timed}.pkl" if root is not None else None
    if path is not None and path.exists():
        return pickle.loads(path.read_bytes())  # noqa: S301 - the bench's own file, written below
    made = corpus()
    queries = make_queries(made.tracks, length, timed, seconds, copies=made.copies)
    for query in queries:
        query["topic"] = int(made.topics[query["video"]])
    case = (queries, truth_for(made, queries, count))
    if path is not None:
        path.write_bytes(pickle.dumps(case))
    return case


def best_offset(query: np.ndarray, track: np.ndarray) -> int:
    """The offset of the first moment of `query` in `track` by the exact scores (moments picked as the core does)."""
    found = score_offsets(query, track.astype(np.float32)[None])
    return int(found.offsets[pick_moments(found.offsets, found.scores[0], found.aligned, 1)[0]])


def make_corpus(kind: str, frames: int) -> Corpus:
    """The `kind` corpus (structured or random) of `frames` frames, seeded by them (the lengths) and 1."""
    lengths = video_lengths(frames, np.random.default_rng(frames))
    return structured_corpus(lengths, seed=1) if kind == "structured" else random_corpus(make_tracks(lengths, seed=1))


def claim_store(root: Path, kind: str, frames: int) -> None:
    """Mark `root` as the store of this corpus; refuse one marked for another."""
    marker, mine = root / "bench-corpus.json", {"corpus": kind, "frames": frames}
    if marker.exists() and json.loads(marker.read_text()) != mine:
        raise SystemExit(f"{root} holds the store of {marker.read_text()}, not {mine}")
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(mine))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_600_000)
    parser.add_argument("--corpus", choices=("structured", "random"), default="structured")
    parser.add_argument("--queries", type=int, default=40, help="queries per length checked against the truth")
    parser.add_argument("--timed", type=int, default=100, help="queries per length timed (>= --queries)")
    parser.add_argument("--seconds", type=int, nargs="+", default=list(QUERY_SECONDS))
    parser.add_argument(
        "--settings",
        default="auto,1024:512,2048:1024,scan",
        help="comma-separated: auto (the default scheme and settings), per_frame:hypotheses (the votes), scan, "
        "windows (the window-token experiment, window_stage.py)",
    )
    parser.add_argument("--work", type=Path, default=None, help="folder for the temporary store")
    parser.add_argument("--store", type=Path, default=None, help="build the store here once and reuse it")
    args = parser.parse_args()
    made: list[Corpus] = []  # the corpus, made when first needed (a rerun on a kept store may not need it)

    def corpus() -> Corpus:
        if not made:
            started = time.perf_counter()
            made.append(make_corpus(args.corpus, args.frames))
            summary = {
                "corpus": args.corpus,
                "videos": len(made[0].tracks),
                "topics": len(set(made[0].topics.tolist())),
            }
            summary |= {"copies": len(made[0].copies), "frames": sum(map(len, made[0].tracks))}
            print(json.dumps(summary | {"corpus_s": round(time.perf_counter() - started, 1)}), flush=True)
        return made[0]

    with tempfile.TemporaryDirectory(dir=args.work) as work:
        root = args.store or Path(work) / "store"
        claim_store(root, args.corpus, args.frames)
        reused = args.store is not None and TokenStore(root, dtype="float16").open(indexes=False) is not None
        build_s = None if reused else build_store(corpus().tracks, root)[1]
        version = TokenStore(root, dtype="float16").open()
        describe_store(root, version, build_s, args.frames)
        runners: dict[str, Callable[[np.ndarray], list[TrackHit]]] = {}  # per setting, made once
        for seconds in args.seconds:
            length = round(seconds / FRAME_S)
            t0 = time.perf_counter()
            queries, truth = queries_and_truth(root if args.store else None, corpus, seconds, args)
            truth_s = round(time.perf_counter() - t0, 1)
            for setting in args.settings.split(","):
                if setting == "windows" and length < window_stage.WINDOWS.frames:
                    continue  # a query shorter than a window has none
                started = time.perf_counter()
                if setting not in runners:
                    runners[setting] = searcher(version, setting, root)  # the windows: read or built once
                ready_s = round(time.perf_counter() - started, 1)
                found = measure(runners[setting], queries, truth)
                case = {"seconds": seconds, "frames": length, "truth_s": truth_s, "setting": setting}
                print(json.dumps(case | {"ready_s": ready_s, **found}), flush=True)


def describe_store(root: Path, version, build_s: float | None, frames: int) -> None:  # noqa: ANN001
    """Print the store's build time, index type and bytes per frame."""
    shards = sum(p.stat().st_size for p in (root / "shards").glob("*.visual.npy"))
    index = sum(p.stat().st_size for p in (root / "versions" / version.name).rglob("visual.faiss"))
    line = {
        "build_s_visual": round(build_s, 1) if build_s is not None else f"reused {root}",
        "factory": version.manifest.factory,
        "bytes_per_frame": {"tokens_fp16": round(shards / frames), "frame_index": round(index / frames)},
        "load": os.getloadavg()[0],
    }
    print(json.dumps(line), flush=True)


def stage_of(setting: str) -> FirstStage:
    """auto -> the search's defaults; scan -> the scan; per_frame:hypotheses -> the votes with them."""
    if setting in ("auto", "scan"):
        return FirstStage(setting)
    per_frame, hypotheses = (int(x) for x in setting.split(":"))
    return FirstStage("votes", per_frame=per_frame, hypotheses=hypotheses)


if __name__ == "__main__":
    main()
