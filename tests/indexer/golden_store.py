"""A token store and a SQLite catalog as the code of 2026-12-07 wrote them (before `indexer/` was split by
concern), kept in `tests/data/store-2026-12-07/` with the answers that code gave over them: a later layout of the
code must open them and answer identically (`test_golden_store.py`).

Written once, by the code of that day, with

    python -m tests.indexer.golden_store tests/data/store-2026-12-07

Two data dirs: `single/` (one store) and `sharded/` (3 shards), each `index/` + `catalog.db`, holding 8 videos of
2-3 clips with seeded random tokens (T=16, D=32) and a ninth deleted after its commit (deleted rows in the
manifest). `answers.json`: per data dir, the catalog's videos and, per query and scheme, the hits (track id,
score, moments' offsets and scores).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from indexer.catalog.queries import video_page
from indexer.catalog.tables import VideoStatus, new_video, open_catalog
from indexer.cluster.corpus import Corpus, ShardedStore
from indexer.cluster.scatter import LocalSearcher, SearchRequest
from indexer.ingest import commit
from indexer.ingest.pipeline import delete_videos
from indexer.search.stage import FirstStage
from indexer.store.token_store import TokenStore

T, D, MODEL, FRAME_S = 16, 32, "golden-model", 0.64
LAYOUTS = {"single": 1, "sharded": 3}
SCHEMES = ("exhaustive", "votes", "scan")
# (video index, first frame, frames, target): excerpts of stored videos, re-noised
QUERIES = [(2, 5, 8, "visual"), (4, 3, 24, "audio"), (6, 10, 12, "visual"), (0, 0, 40, "audio")]


def seeded_tokens(clips: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Audio and visual tokens (clips, T, D), L2-normalised, of one seed, and their presence (clips, 2)."""
    rng = np.random.default_rng(seed)
    audio, visual = (rng.standard_normal((clips, T, D)).astype(np.float32) for _ in range(2))
    for x in (audio, visual):
        x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return audio, visual, np.ones((clips, 2), dtype=bool)


def corpus_of(data: Path, shards: int) -> Corpus:
    return TokenStore(data / "index") if shards == 1 else ShardedStore(data / "index", shards)


def write(data: Path, shards: int) -> None:
    """Nine videos committed one at a time (seeded tokens), the last one deleted."""
    sessions = open_catalog(f"sqlite:///{data / 'catalog.db'}")
    store = corpus_of(data, shards)
    for n in range(9):
        clips = [(i * 10.24, 10.24, "audio,visual") for i in range(2 + n % 2)]
        video = new_video(f"/media/golden_{n}.mp4", f"{n:02d}" * 32, MODEL, clips)
        with sessions() as session:
            commit.commit_videos(session, store, MODEL, [video], *seeded_tokens(len(clips), seed=n), frame_s=FRAME_S)
    delete_videos([9], store, sessions)


def _query(index: int, first: int, frames: int) -> np.ndarray:
    audio, visual, _ = seeded_tokens(2 + index % 2, seed=index)
    track = visual.reshape(-1, D)  # (clips * T, D): the video's frames in time order
    part = track[first : first + frames]
    part = np.concatenate([part, np.zeros((frames - len(part), D), np.float32)]) if len(part) < frames else part
    noisy = part + 0.3 * np.random.default_rng(100 + index).standard_normal(part.shape).astype(np.float32)
    return noisy / np.linalg.norm(noisy, axis=-1, keepdims=True)


def answers(data: Path, shards: int) -> dict[str, Any]:
    """What the code answers over one data dir: its videos, and every query's hits under every scheme."""
    sessions = open_catalog(f"sqlite:///{data / 'catalog.db'}")
    total, rows = video_page(sessions, 100, 0)
    videos = [[r.id, r.uri, r.name, VideoStatus(r.status).value, r.duration, r.modalities] for r in rows]
    version = corpus_of(data, shards).open(gpu=False)
    assert version is not None
    found: dict[str, Any] = {}
    for index, first, frames, target in QUERIES:
        for scheme in SCHEMES:
            request = SearchRequest(target=target, k=5, stage=FirstStage(scheme), moments=2)  # type: ignore[arg-type]
            hits = LocalSearcher().search(version, _query(index, first, frames), request)
            found[f"{index}:{first}:{frames}:{target}:{scheme}"] = [
                [h.track_id, h.clip_id, round(h.score, 6), [[m.offset, round(m.score, 6)] for m in h.moments]]
                for h in hits
            ]
    return {"videos_total": total, "videos": videos, "version": version.name, "hits": found}


def main(folder: Path) -> None:
    out: dict[str, Any] = {}
    for name, shards in LAYOUTS.items():
        (folder / name).mkdir(parents=True)
        write(folder / name, shards)
        out[name] = answers(folder / name, shards)
    (folder / "answers.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
