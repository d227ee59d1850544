"""The retrieval core: query tokens (T_q, D) -> the top-k clips of a store version.

Candidates come from every live clip when the store is small; otherwise, for a full-length query
ranked by diagonal_mean, from the clip-sketch index (`indexer.sketch`: nearest clips on an
approximation of the metric itself), and for other queries from the per-frame FAISS index (each
query frame's nearest frames; their clips). Then the exact similarity of the chosen strategy is
computed on the stored tokens (`model.similarity`), sliding a shorter query over each clip and a
longer query over itself. Deleted clips never come back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch

from indexer import sketch
from indexer.store import StoreVersion
from model.similarity import STRATEGIES, TIE_TOLERANCE, centre_of_best_run, clip_scores, sliding_scores

EXHAUSTIVE_BELOW = 2000  # live clips up to which every clip is re-ranked (a few ms)


@dataclass(frozen=True)
class ClipHit:
    clip_id: int
    row: int
    score: float
    offset: int  # where the query's first frame lands in the clip (negative: the clip starts inside the query)
    frame_scores: tuple[float, ...]  # cosine of each aligned (query, clip) frame pair


def candidate_rows(version: StoreVersion, query: np.ndarray, target: str, per_frame: int) -> np.ndarray:
    """Live rows whose frames are among the `per_frame` nearest of some query frame."""
    vectors = np.ascontiguousarray(query, dtype=np.float32)
    _, ids = version.index[target].search(vectors, min(per_frame, version.index[target].ntotal))
    rows = np.unique(ids[ids >= 0] // version.frames)
    return rows[version.live[rows] & version.present[target][rows]]


def sketch_rows(version: StoreVersion, query: np.ndarray, target: str, count: int) -> np.ndarray:
    """Live rows of the `count` clips whose sketches are nearest a full-length query (T, D)."""
    projection, index = version.sketch[target]
    rows = np.unique(sketch.candidates(index, projection, np.asarray(query, dtype=np.float32), count))
    return rows[version.live[rows] & version.present[target][rows]]


def choose_rows(
    version: StoreVersion,
    query: np.ndarray,
    target: str,
    strategy: str,
    scheme: str,
    per_frame: int,
    sketch_candidates: int,
) -> np.ndarray:
    """The rows to re-rank. scheme: "auto" (exhaustive when small, sketches when they apply, else
    frames), "exhaustive", "frames" or "sketch"."""
    if scheme == "auto":
        if len(version) <= EXHAUSTIVE_BELOW:
            scheme = "exhaustive"
        elif query.shape[0] == version.frames and strategy == "diagonal_mean" and version.sketch:
            scheme = "sketch"
        else:
            scheme = "frames"
    if scheme == "exhaustive":
        return version.searchable(target)
    if scheme == "frames":
        return candidate_rows(version, query, target, per_frame)
    if scheme == "sketch" and version.sketch and query.shape[0] == version.frames:
        return sketch_rows(version, query, target, sketch_candidates)
    raise ValueError(f"candidate scheme {scheme!r} does not apply here (sketches need a full-length query)")


def score_rows(query: torch.Tensor, tokens: torch.Tensor, strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """query (T_q, D), tokens (N, T, D) -> (scores (N,), offsets (N,)) of the best alignment."""
    length, frames = query.shape[0], tokens.shape[1]
    if length == frames:
        return clip_scores(query[None], tokens, strategy)[0], torch.zeros(len(tokens), dtype=torch.long)  # type: ignore[arg-type]
    if length < frames:
        match = sliding_scores(query, tokens, strategy)  # type: ignore[arg-type]
        return match.scores, match.offsets
    windows = query.unfold(0, frames, 1).permute(0, 2, 1)  # (W, T, D): every clip-long window of the query
    per_window = clip_scores(windows, tokens, strategy)  # type: ignore[arg-type]  # (W, N)
    best, where = centre_of_best_run(per_window.t(), TIE_TOLERANCE)  # ties: the middle of the equal windows
    return best, -where


def frame_scores(query: torch.Tensor, clip: torch.Tensor, offset: int) -> tuple[float, ...]:
    """Cosines of the aligned frame pairs for a clip matched at `offset`."""
    if query.shape[0] <= clip.shape[0]:
        aligned_q, aligned_c = query, clip[offset : offset + query.shape[0]]
    else:  # a query longer than the clip: offset <= 0 says where the clip starts inside the query
        aligned_q, aligned_c = query[-offset : -offset + clip.shape[0]], clip
    return tuple((aligned_q * aligned_c).sum(dim=-1).tolist())


def search(
    version: StoreVersion,
    query: np.ndarray,
    target: str,
    k: int = 10,
    strategy: str = "diagonal_mean",
    scheme: str = "auto",
    per_frame: int = 256,
    sketch_candidates: int = 256,
) -> list[ClipHit]:
    """Top-k clips of the `target` modality ("audio" | "visual") for L2-normalised query tokens (T_q, D)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if query.ndim != 2 or query.shape[1] != version.manifest.dim:
        raise ValueError(f"query tokens must be (T_q, {version.manifest.dim}), got {tuple(query.shape)}")
    rows = choose_rows(version, query, target, strategy, scheme, per_frame, sketch_candidates)
    if len(rows) == 0:
        return []
    tokens = torch.from_numpy(version.gather(target, rows))
    q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))
    scores, offsets = score_rows(q, tokens, strategy)
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    return [
        ClipHit(
            int(version.clip_ids[rows[i]]),
            int(rows[i]),
            float(scores[i]),
            int(offsets[i]),
            frame_scores(q, tokens[i], int(offsets[i])),
        )
        for i in order.tolist()
    ]


@dataclass(frozen=True)
class VideoHit:
    """A video's best clip for a query, and the moment of the video that matched."""

    video_id: int
    uri: str
    score: float
    clip_id: int
    clip_start: float
    moment: tuple[float, float]  # seconds in the video
    frame_scores: tuple[float, ...]


def matched_moment(
    clip_start: float, clip_duration: float, offset: int, query_frames: int, frames: int, clip_seconds: float = 10.24
) -> tuple[float, float]:
    """Seconds of the video covered by the aligned frames: a shorter query covers its window of the clip."""
    if query_frames >= frames:
        return clip_start, clip_start + clip_duration
    step = clip_seconds / frames
    start = clip_start + offset * step
    return start, min(clip_start + clip_duration, start + query_frames * step)


def search_videos(
    version: StoreVersion,
    session,
    query: np.ndarray,
    target: str,
    k: int = 10,  # noqa: ANN001
    strategy: str = "diagonal_mean",
    clip_pool: int = 8,
    moment_from: str | None = None,
) -> list[VideoHit]:
    """Top-k videos (each by its best clip) for query tokens; `session` is a catalog session.

    `moment_from`: the modality of the query's own tokens. When given, a query shorter than a clip is
    placed in each hit's clip where it best matches that clip's tokens of the same modality (an audio
    excerpt on the video's own soundtrack: which moment sounds like it), when the clip has them; else,
    and for the ranking always, where it best matches the `target` tokens.
    """
    from sqlalchemy import select
    from sqlalchemy.orm import joinedload

    from indexer.catalog import Clip, VideoStatus

    clip_hits = search(version, query, target, k=k * clip_pool, strategy=strategy)
    wanted = [hit.clip_id for hit in clip_hits]
    clips = {c.id: c for c in session.scalars(select(Clip).where(Clip.id.in_(wanted)).options(joinedload(Clip.video)))}
    best: dict[int, tuple[ClipHit, Clip]] = {}
    for hit in clip_hits:
        clip = clips.get(hit.clip_id)
        if clip is None or clip.video.status != VideoStatus.INDEXED or clip.video_id in best:
            continue  # clips of deleted videos, and any clip after a video's best one
        best[clip.video_id] = (hit, clip)
        if len(best) == k:
            break
    hits, chosen = [hit for hit, _ in best.values()], [clip for _, clip in best.values()]
    if moment_from is not None and query.shape[0] < version.frames:
        hits = _placed(version, query, target, moment_from, hits)
    moment = partial(matched_moment, query_frames=query.shape[0], frames=version.frames)
    return [
        VideoHit(
            clip.video_id,
            clip.video.uri,
            hit.score,
            hit.clip_id,
            clip.start,
            moment(clip.start, clip.duration, hit.offset),
            hit.frame_scores,
        )
        for hit, clip in zip(hits, chosen, strict=True)
    ]


def _placed(version: StoreVersion, query: np.ndarray, target: str, modality: str, hits: list[ClipHit]) -> list[ClipHit]:
    """The hits with their offsets where the shorter query best matches each clip's `modality` tokens (ties:
    the middle), and the per-frame `target` cosines there; a hit whose clip lacks that modality is kept."""
    movable = [hit for hit in hits if version.present[modality][hit.row]]
    if not movable:
        return hits
    rows = np.array([hit.row for hit in movable], dtype=np.int64)
    q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))
    offsets = sliding_scores(q, torch.from_numpy(version.gather(modality, rows))).offsets.tolist()  # one pass
    targets = torch.from_numpy(version.gather(target, rows))  # (n, T, D)
    placed = {
        hit.row: replace(hit, offset=offset, frame_scores=frame_scores(q, clip, offset))
        for hit, offset, clip in zip(movable, offsets, targets, strict=True)
    }
    return [placed.get(hit.row, hit) for hit in hits]
