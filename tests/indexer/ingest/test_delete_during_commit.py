"""Issue 28.3: a delete of a video whose commit is under way (its catalog row committed pending, its tokens
going into the store, then the row marked indexed) is never acknowledged and then undone. The commit is held at
each point of that window by a hook while the delete runs; after both, the video is deleted, none of its
tokens are live, and the same content commits (indexes) again. Both databases, one store and three shards."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog.tables import Video, VideoStatus, new_video, open_catalog
from indexer.cluster.corpus import Corpus, ShardedStore, version_part
from indexer.ingest import commit
from indexer.ingest.pipeline import delete_videos
from indexer.jobs import records
from indexer.store.token_store import TokenStore

from ..golden_store import seeded_tokens

pytestmark = pytest.mark.integration  # PostgreSQL too

MODEL, SHA = "m", "c0ffee" * 10
HOLD_S = 30.0  # the longest any step here may wait for the other thread


def _store(kind: str, root: Path) -> Corpus:
    return TokenStore(root) if kind == "single" else ShardedStore(root, 3)


def _commit(session: Session, store: Corpus, sha: str = SHA, seed: int = 0) -> Video:
    """One video of two clips (its content `sha`) committed with random tokens."""
    video = new_video(f"/media/{sha[:8]}.mp4", sha, MODEL, [(0.0, 10.24, "audio,visual"), (10.24, 5.0, "audio")])
    commit.commit_videos(session, store, MODEL, [video], *seeded_tokens(2, seed), frame_s=0.64)
    return video


def _live(store: Corpus) -> set[int]:
    version = store.open(gpu=False, indexes=False)
    return set() if version is None else set(version.clip_ids[version.live].tolist())


def _searchable(store: Corpus, video_id: int) -> bool:
    """The video's track is in the live version, every row of it live (what a search scores)."""
    version = store.open(gpu=False, indexes=False)
    part = version_part(version, video_id)
    if part is None:
        return False
    live = part.tracks.live[part.tracks.ids == video_id]
    return len(live) > 0 and bool(live.all())


def _status(sessions: sessionmaker[Session], video_id: int) -> VideoStatus:
    with sessions() as session:
        video = session.get(Video, video_id)
        assert video is not None
        return video.status


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HOLD_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class Held:
    """A commit run in a thread and held at one point of it until `release`."""

    def __init__(self) -> None:
        self.reached, self.go = threading.Event(), threading.Event()
        self.video: Video | None = None
        self.error: BaseException | None = None

    def hold(self, *_: object) -> None:
        self.reached.set()
        assert self.go.wait(HOLD_S), "never released"

    def run(self, sessions: sessionmaker[Session], store: Corpus, point: str) -> threading.Thread:
        def body() -> None:
            with sessions() as session:
                if point == "pending":  # its rows are committed (pending), its tokens not yet added
                    event.listen(session, "after_commit", self.hold, once=True)
                try:
                    self.video = _commit(session, store)
                except BaseException as exc:  # re-raised by the test
                    self.error = exc

        thread = threading.Thread(target=body, name=f"commit held {point}")
        thread.start()
        assert self.reached.wait(HOLD_S), "the commit never reached its hold"
        return thread


def _held_at_add(store: Corpus, held: Held, after: bool) -> None:
    """The store's add holds just before its tokens go into the store, or once they are in (`after`)."""
    add = store.add

    def holding_add(*args: object, **kwargs: object) -> str | None:
        if not after:
            held.hold()
        published = add(*args, **kwargs)  # type: ignore[arg-type]
        if after:
            held.hold()
        return published

    store.add = holding_add  # type: ignore[method-assign]


def _waiting(caplog: pytest.LogCaptureFixture) -> bool:
    return any("waits for" in r.getMessage() for r in caplog.records)


@contextlib.contextmanager
def _delete_in_thread(sessions: sessionmaker[Session], store: Corpus, video_id: int) -> Iterator[list[int]]:
    removed: list[int] = []
    thread = threading.Thread(target=lambda: removed.append(delete_videos([video_id], store, sessions)))
    thread.start()
    try:
        yield removed
    finally:
        thread.join(HOLD_S)
        assert not thread.is_alive(), "the delete never finished"


@pytest.mark.parametrize("kind", ["single", "sharded"])
@pytest.mark.parametrize("point", ["pending", "added", "lockless"])
def test_a_video_deleted_while_its_commit_runs_stays_deleted(
    catalog_url: str,
    tmp_path: Path,
    kind: str,
    point: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pending: the delete runs between the rows' commit and the tokens; added: between the tokens and the mark
    indexed (a delete waits for the commit, or runs first on code that does not order them); lockless: just
    before the tokens go in, by a deleting process that does not take the status lock (an older version's):
    the commit then finds its row deleted and takes the tokens out again."""
    caplog.set_level(logging.INFO, logger="indexer.ingest.commit")
    sessions, store = open_catalog(catalog_url), _store(kind, tmp_path / "index")
    with sessions() as session:
        other = _commit(session, store, sha="beef" * 16, seed=1)  # a neighbour that must stay untouched
    held = Held()
    if point != "pending":
        _held_at_add(store, held, after=point == "added")
    commit_thread = held.run(sessions, store, point)
    assert held.video is None and commit_thread.is_alive()
    with sessions() as session:  # the row the held commit wrote: pending, its id allotted
        (video_id,) = session.scalars(select(Video.id).where(Video.sha256 == SHA)).all()
    if point == "lockless":
        monkeypatch.setattr(commit, "status_lock", lambda _store: contextlib.nullcontext())
    with _delete_in_thread(sessions, store, video_id) as removed:
        try:
            _wait(lambda: bool(removed) or _waiting(caplog), "the delete to end or wait")
            while_held = list(removed)
        finally:
            held.go.set()
    assert while_held == ([] if point == "added" else [1])  # only a commit holding the status lock is waited for
    commit_thread.join(HOLD_S)
    assert not commit_thread.is_alive() and held.error is None, held.error
    assert removed == [1]  # acknowledged ...
    assert _status(sessions, video_id) == VideoStatus.DELETED  # ... and kept
    assert held.video is not None and held.video.id == video_id
    live = _live(store)
    assert not {c.id for c in held.video.clips} & live  # none of its tokens is searchable
    assert {c.id for c in other.clips} <= live and _status(sessions, other.id) == VideoStatus.INDEXED
    with sessions() as session:
        assert not records.indexed(session, SHA, MODEL)  # an upload of the content is indexed, not skipped
        again = _commit(session, store, seed=2)
    assert _status(sessions, again.id) == VideoStatus.INDEXED and {c.id for c in again.clips} <= _live(store)
    assert _searchable(store, again.id) and _searchable(store, other.id)
    assert again.id != video_id and _status(sessions, video_id) == VideoStatus.DELETED  # ids are never reused
