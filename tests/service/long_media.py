"""Long videos made of synthetic clips of a seed the demo checkpoint never saw, unique by construction, for
the end-to-end tests of moments and long queries (`test_moments.py`, `test_long_queries.py`).

- each video shows and sounds only the objects of its own group of the vocabulary (disjoint groups);
- its events last 10 / 9 +- 0.2 s (nine per 10-s clip, back to back, also across the clip joins);
- consecutive objects differ and no run of `order` consecutive objects occurs twice in a video: the
  objects follow an Eulerian circuit of the graph whose nodes are the runs of order - 1 objects (each
  two consecutive ones different) and whose edges are the runs of `order` (every node has as many edges
  in as out, so the circuit takes every run once).
So the objects of a window holding `order` events, and the times at which they change, occur nowhere
else in the corpus. Each clip also has its own background and noise level, each event its position and
loudness.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np

from ..model.media_files import ffmpeg
from .conftest import DEMO_CHECKPOINT, Corpus

EVENTS_PER_CLIP, JITTER = 9, 0.2  # events of 10 / 9 +- 0.2 s


@dataclass(frozen=True)
class LongCorpus:
    corpus: Corpus
    videos: list[Path]  # the long videos; video id = position + 1
    durations: list[float]
    clips: list[list[Path]]  # per long video, the 10-s clips it was made of (indexed too when asked)


def unique_walk(group: tuple[int, ...], count: int, rng: np.random.Generator, order: int) -> list[int]:
    """`count` objects of `group` in which no run of `order` consecutive objects repeats (and consecutive
    ones differ): the start of a random Eulerian circuit (Hierholzer) of the graph of runs of order - 1."""
    nodes = [run for run in product(group, repeat=order - 1) if all(a != b for a, b in zip(run, run[1:], strict=False))]
    edges = {node: [(*node[1:], int(c)) for c in rng.permutation(group) if c != node[-1]] for node in nodes}
    stack, circuit = [nodes[int(rng.integers(len(nodes)))]], []
    while stack:
        if edges[stack[-1]]:
            stack.append(edges[stack[-1]].pop())
        else:
            circuit.append(stack.pop())
    circuit.reverse()  # runs r0, r1, ...: every edge (run of `order`) once
    objects = [*circuit[0], *(run[-1] for run in circuit[1:])]
    assert count <= len(objects), (count, len(objects))
    return objects[:count]


def _durations(rng: np.random.Generator) -> list[float]:
    """EVENTS_PER_CLIP durations summing to a clip, each within JITTER of their mean."""
    from training.synth import SECONDS

    jitter = rng.uniform(-1.0, 1.0, EVENTS_PER_CLIP)
    jitter -= jitter.mean()
    jitter *= JITTER / max(JITTER, float(np.abs(jitter).max()))
    return (SECONDS / EVENTS_PER_CLIP + jitter).tolist()


def clip_specs(objects: list[int], rng: np.random.Generator, name: str) -> list:
    """One ClipSpec per EVENTS_PER_CLIP objects, named f"{name}_{k:03d}"."""
    from training.synth import SECONDS, ClipSpec, Event

    specs = []
    for k in range(len(objects) // EVENTS_PER_CLIP):
        bounds = np.r_[0.0, np.cumsum(_durations(rng))]
        bounds[-1] = SECONDS
        events = [
            Event(
                obj,
                float(bounds[i]),
                float(bounds[i + 1]),
                *rng.uniform(0.25, 0.75, 2).tolist(),
                rng.uniform(0.12, 0.22),
                rng.uniform(0.4, 1.0),
            )
            for i, obj in enumerate(objects[k * EVENTS_PER_CLIP : (k + 1) * EVENTS_PER_CLIP])
        ]
        background = tuple(int(v) for v in rng.integers(0, 90, size=3))
        specs.append(
            ClipSpec(f"{name}_{k:03d}", events, background, float(rng.uniform(0.01, 0.08)), None, None, 0.0, "")
        )
    return specs


def assert_unique(specs: list, order: int) -> None:
    """What the module promises of one video's events: lengths within JITTER of 10 / 9 s, consecutive
    objects different, no run of `order` objects twice."""
    events = [e for spec in specs for e in spec.events]
    assert all(abs(e.end - e.start - 10.0 / EVENTS_PER_CLIP) <= JITTER + 1e-6 for e in events)
    objects = [e.object for e in events]
    assert all(a != b for a, b in zip(objects, objects[1:], strict=False))
    runs = [tuple(objects[i : i + order]) for i in range(len(objects) - order + 1)]
    assert len(set(runs)) == len(runs)


def long_video(specs: list, folder: Path, target: Path, seed: int) -> tuple[float, list[Path]]:
    """The clips of `specs` written to `folder` and joined into `target`: its duration and the clips."""
    from model.media import ffmpeg_binary
    from model.probe import probe
    from training.synth import write_clip

    paths = [folder / write_clip(spec, folder, seed, ffmpeg_binary())["path"] for spec in specs]
    listing = folder / f"{target.stem}.txt"
    listing.write_text("".join(f"file '{p}'\n" for p in paths))
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(target))
    duration = probe(target).duration
    assert duration is not None
    return duration, paths


def build(
    root: Path, *, seed: int, groups: tuple[tuple[int, ...], ...], clips: tuple[int, ...], order: int, index_clips: bool
) -> LongCorpus:
    """Long video v of clips[v] clips of groups[v]'s objects under root/media (ids 1..len(groups)), its
    clips under root/media/clips (indexed after the long videos when `index_clips`, else root/clips), all
    indexed with the demo checkpoint into root/data."""
    from indexer.catalog.tables import open_catalog
    from indexer.ingest.pipeline import Indexer, list_media, model_id_of
    from indexer.store.token_store import TokenStore
    from model import load_model

    rng = np.random.default_rng(seed)
    media = root / "media"
    parts = media / "clips" if index_clips else root / "clips"
    parts.mkdir(parents=True)
    media.mkdir(exist_ok=True)
    videos, durations, made = [], [], []
    for v, group in enumerate(groups):
        specs = clip_specs(unique_walk(group, clips[v] * EVENTS_PER_CLIP, rng, order), rng, f"long_{seed}_{v}")
        assert_unique(specs, order)
        target = media / f"long_{v}.mp4"
        duration, paths = long_video(specs, parts, target, seed)
        videos.append(target)
        durations.append(duration)
        made.append(paths)
    data = root / "data"
    indexer = Indexer(
        load_model(DEMO_CHECKPOINT),
        model_id_of(DEMO_CHECKPOINT),
        TokenStore(data / "index"),
        open_catalog(f"sqlite:///{data / 'catalog.db'}"),
        workers=1,
    )
    summary = indexer.index(videos, show_progress=False)
    assert (summary.indexed, summary.failed) == (len(groups), 0), summary
    if index_clips:
        summary = indexer.index(list_media(parts), show_progress=False)
        assert (summary.indexed, summary.failed) == (sum(clips), 0), summary
    return LongCorpus(Corpus(media, data, videos), videos, durations, made)


def excerpt(source: Path, start: float, length: float, target: Path) -> Path:
    """The audio of source's [start, start + length) s; cut after decoding (-ss after -i), so it starts and
    lasts exactly as asked (an input seek may land up to 2 s early in these files)."""
    ffmpeg(
        "-i", str(source), "-ss", f"{start:.3f}", "-t", f"{length:.3f}", "-vn", "-ac", "1", "-ar", "16000", str(target)
    )
    return target


def assert_moments_in_order(results: list[dict]) -> None:
    """Every hit: moments sorted by the score they show, the hit's score the first's; hits by score."""
    for hit in results:
        scores = [m["score"] for m in hit["moments"]]
        assert scores == sorted(scores, reverse=True) and hit["score"] == scores[0], hit
    assert [h["score"] for h in results] == sorted((h["score"] for h in results), reverse=True)
