"""The structured corpus of bench_tracks.py (`--corpus structured`, issue 30): videos of topics, some holding
near-copies of other videos' segments, with the ground truth of how it was built.

Tokens are made like bench_tracks.make_tracks' (the random corpus): event centres from an anisotropic Gaussian
(power-law spectrum, `decay`), each video a sequence of events of 2 to 12 frames, a video-level offset
(weight 0.5) and per-frame noise (0.6 / sqrt(D)), every frame unit-norm. What differs is which events a video
holds, and the copies:

- **Topics** (`StructuredConfig.topics_per_video`: one topic per ~10 videos, at least 2): a topic is a
  weighted set of `topic_events` (64) events drawn from all `events` (4,096), its weights Zipf-like
  (1 / rank); topics draw independently, so two may share an event. A video belongs to one topic (uniform);
  each of its events comes from its topic's set with probability `topic_share` (0.8), by the weights, else
  uniformly from all events.
- **Near-copies**: a share `copy_share` (0.2) of the videos (the *targets*, at least `copy_min_frames` long)
  each hold one segment of another video (its *source*, drawn uniformly among the videos that are no target,
  so no copy is of a copy), of `copy_min_frames` to `copy_max_frames` frames (16 to 469: 10 s to 5 min,
  log-uniform, at most the source's length - 1 and the target's), read off the source's frame grid (each
  copied frame interpolates two consecutive source frames at one random fraction, as bench_tracks'
  queries), re-noised by `copy_noise` / sqrt(D) (0.6, more than a query's 0.5) and renormalised, written
  over the target's frames at a uniformly random place.

Everything is drawn from `seed`. `Corpus` holds the tracks, each video's topic and the copies (`Copy`:
source, the source span's first frame as a float, target, the target span's first frame, frames); the random
corpus is a `Corpus` with one topic per video and no copies (`random_corpus`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

D = 768


@dataclass(frozen=True)
class Copy:
    """A near-copy: target frames [target_start, target_start + frames) are source frames
    [source_start, source_start + frames) (source_start off the grid: interpolated), re-noised."""

    source: int
    source_start: float
    target: int
    target_start: int
    frames: int


@dataclass
class Corpus:
    """Tracks (one (L, D) float16 array per video), each video's topic, the near-copies."""

    tracks: list[np.ndarray]
    topics: np.ndarray  # (V,) int: a video's topic (the random corpus: its own index)
    copies: list[Copy] = field(default_factory=list)


@dataclass(frozen=True)
class StructuredConfig:
    """The structured corpus's parameters (see the module)."""

    events: int = 4096
    decay: float = 1.0
    videos_per_topic: int = 10
    topic_events: int = 64
    topic_share: float = 0.8
    copy_share: float = 0.2
    copy_min_frames: int = 16
    copy_max_frames: int = 469
    copy_noise: float = 0.6

    def topics_for(self, videos: int) -> int:
        """Topics for a corpus of `videos`: one per `videos_per_topic`, at least 2."""
        return max(2, round(videos / self.videos_per_topic))


def event_space(rng: np.random.Generator, events: int, decay: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centres (events, D) unit float32, the spectrum's scale (D,), the basis (D, D)) as make_tracks draws them."""
    scale = (1.0 + np.arange(D)) ** (-decay / 2)
    basis = np.linalg.qr(rng.standard_normal((D, D)))[0]
    centres = ((rng.standard_normal((events, D)) * scale) @ basis.T).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return centres, scale, basis


def render(
    plan: np.ndarray, centres: np.ndarray, scale: np.ndarray, basis: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(L,) event per frame -> (L, D) float16 unit tokens: centre + 0.5 x a video offset + 0.6 x noise."""
    offset = (rng.standard_normal(D) * scale) @ basis.T
    offset /= np.linalg.norm(offset)
    noise = rng.standard_normal((len(plan), D)).astype(np.float32) / np.sqrt(D)
    tokens = centres[plan] + 0.5 * offset.astype(np.float32) + 0.6 * noise
    return (tokens / np.linalg.norm(tokens, axis=-1, keepdims=True)).astype(np.float16)


def make_topics(config: StructuredConfig, count: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` topics: (events (topic_events,), weights summing to 1, Zipf-like 1 / rank)."""
    weights = 1.0 / (1.0 + np.arange(config.topic_events))
    weights /= weights.sum()
    return [(rng.choice(config.events, config.topic_events, replace=False), weights) for _ in range(count)]


def event_plan(length: int, topic: tuple[np.ndarray, np.ndarray], share: float, events: int, rng) -> np.ndarray:  # noqa: ANN001
    """(length,) the event of each frame: runs of 2-12 frames, each run's event of the topic w.p. `share`."""
    runs = rng.integers(2, 13, size=length // 2 + 1)
    own = rng.random(len(runs)) < share
    names = np.where(own, rng.choice(topic[0], size=len(runs), p=topic[1]), rng.integers(events, size=len(runs)))
    return np.repeat(names, runs)[:length]


def off_grid(track: np.ndarray, start: float, frames: int) -> np.ndarray:
    """(frames, D) float32: frame k = (1 - a) x track[s + k] + a x track[s + k + 1], s + a = start."""
    s, a = int(np.floor(start)), float(start - np.floor(start))
    source = track.astype(np.float32)
    return (1 - a) * source[s : s + frames] + a * source[s + 1 : s + frames + 1]


def place_copies(tracks: list[np.ndarray], config: StructuredConfig, rng: np.random.Generator) -> list[Copy]:
    """Write the near-copies into `tracks` (in place) and return them (see the module)."""
    lengths = np.array([len(t) for t in tracks])
    eligible = np.flatnonzero(lengths >= config.copy_min_frames)
    targets = np.sort(rng.choice(eligible, int(round(config.copy_share * len(tracks))), replace=False))
    sources = np.setdiff1d(np.flatnonzero(lengths > config.copy_min_frames), targets)
    copies = []
    for target in targets.tolist():
        source = int(rng.choice(sources))
        longest = min(config.copy_max_frames, int(lengths[source]) - 1, int(lengths[target]))
        frames = int(np.exp(rng.uniform(np.log(config.copy_min_frames), np.log(longest + 1))))
        frames = min(max(frames, config.copy_min_frames), longest)
        start = float(rng.integers(0, lengths[source] - frames)) + float(rng.uniform(0, 1))
        at = int(rng.integers(0, lengths[target] - frames + 1))
        copied = off_grid(tracks[source], start, frames)
        copied += config.copy_noise * rng.standard_normal(copied.shape).astype(np.float32) / np.sqrt(D)
        tracks[target][at : at + frames] = (copied / np.linalg.norm(copied, axis=1, keepdims=True)).astype(np.float16)
        copies.append(Copy(source, start, target, at, frames))
    return copies


def structured_corpus(lengths: list[int], seed: int, config: StructuredConfig | None = None) -> Corpus:
    """The structured corpus of videos of `lengths` frames (see the module), drawn from `seed`."""
    config = config or StructuredConfig()
    rng = np.random.default_rng(seed)
    centres, scale, basis = event_space(rng, config.events, config.decay)
    topics = make_topics(config, config.topics_for(len(lengths)), rng)
    of_video = rng.integers(len(topics), size=len(lengths))
    tracks = [
        render(event_plan(n, topics[t], config.topic_share, config.events, rng), centres, scale, basis, rng)
        for n, t in zip(lengths, of_video.tolist(), strict=True)
    ]
    copies = place_copies(tracks, config, rng)
    return Corpus(tracks, of_video, copies)


def random_corpus(tracks: list[np.ndarray]) -> Corpus:
    """Today's random corpus as a Corpus: every video its own topic, no copies."""
    return Corpus(tracks, np.arange(len(tracks)))
