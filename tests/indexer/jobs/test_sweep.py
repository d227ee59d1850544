"""Sweeping a data dir (indexer.jobs.sweep): what dead writers left goes, what live ones may still be writing
(young temp files, young pending rows) and uploads a job still needs stay."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from indexer.catalog.tables import Video, VideoStatus, new_video, open_catalog
from indexer.jobs.records import create_job
from indexer.jobs.sweep import sweep_data_dir
from indexer.store.datadir import DataDir
from indexer.store.token_store import TokenStore


def _aged(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_sweep_removes_what_dead_writers_left(catalog_url: str, tmp_path: Path) -> None:
    data, sessions = tmp_path / "data", open_catalog(catalog_url)
    store = TokenStore(data / "index", factory="IDMap2,Flat")
    tokens = np.ones((1, 2, 4), np.float32) / 2
    store.add(np.array([999_999]), tokens, tokens, "m")  # no clip of the rows below
    (data / "index" / "versions" / ".v000009.abc").mkdir()  # a version never published (a full disk)
    (data / "index" / "shards" / ".s1.audio.npy.7.tmp").write_bytes(b"partial")
    (data / "pending").mkdir()
    dead = data / "pending" / ".sha.1.tmp.npz"
    dead.write_bytes(b"a dead writer's")
    _aged(dead, 3600)
    young = data / "pending" / ".sha.2.tmp.npz"
    young.write_bytes(b"a live writer's")
    (data / "uploads").mkdir()
    settled_upload = data / "uploads" / "a-clip.mp4"
    settled_upload.write_bytes(b"indexed already")
    _aged(settled_upload, 3600)
    wanted_upload = data / "uploads" / "b-clip.mp4"
    wanted_upload.write_bytes(b"still queued")
    _aged(wanted_upload, 3600)
    create_job(sessions, [str(wanted_upload.resolve())])
    with sessions() as session:
        old = new_video("/m/old.mp4", "a" * 64, "m", [(0.0, 10.0, "audio,visual")])
        old.updated_at = datetime.now(UTC) - timedelta(hours=2)
        session.add_all([old, new_video("/m/new.mp4", "b" * 64, "m", [(0.0, 10.0, "audio")])])
        session.commit()

    assert sweep_data_dir(DataDir(data), sessions, "m", grace_s=60) == 2
    assert list((data / "index" / "versions").glob(".*")) == []
    assert list((data / "index" / "shards").glob(".*.tmp")) == []
    assert not dead.exists() and young.exists()
    assert not settled_upload.exists() and wanted_upload.exists()
    with sessions() as session:
        left = {v.uri: v.status for v in session.query(Video).all()}
    assert left == {"/m/new.mp4": VideoStatus.PENDING}  # the old orphan went; the young one may be live


def test_sweep_removes_managed_copies_no_video_names_and_posters_of_deleted_videos(
    catalog_url: str, tmp_path: Path
) -> None:
    data, sessions = tmp_path / "data", open_catalog(catalog_url)
    media, posters = data / "media", data / "posters"
    media.mkdir(parents=True)
    (data / "pending").mkdir()
    copies = {key: media / f"{key * 64}.mp4" for key in "abcde"}
    for path in copies.values():
        path.write_bytes(b"an upload's bytes")
        _aged(path, 3600)
    young = media / f"{'f' * 64}.mp4"
    young.write_bytes(b"being made")
    (data / "pending" / f"{'c' * 64}.m.npz").write_bytes(b"its shard waits to be merged")
    with sessions() as session:
        named = new_video(str(copies["a"].resolve()), "a" * 64, "m", [(0.0, 10.0, "audio")])
        named.status = VideoStatus.INDEXED
        gone = new_video(str(copies["b"].resolve()), "b" * 64, "m", [(0.0, 10.0, "audio")])
        gone.status = VideoStatus.DELETED
        session.add_all([named, gone])
        session.commit()
        alive, deleted = named.id, gone.id
    for video_id in (alive, deleted, 777):
        (posters / str(video_id)).mkdir(parents=True)
        (posters / str(video_id) / "p.jpg").write_bytes(b"jpeg")

    sweep_data_dir(DataDir(data), sessions, "m", grace_s=60)
    left = sorted(p.name[0] for p in media.iterdir())
    assert left == ["a", "c", "f"]  # named by a video, by a pending shard, or young; b (deleted), d, e went
    assert sorted(p.name for p in posters.iterdir()) == [str(alive)]


def test_decode_folders_of_dead_processes_are_swept(tmp_path: Path) -> None:
    """`cavsync-<pid>-*` decode folders go once their process is gone; a live one's, an upload's and a young
    folder of the older unnamed form stay; an old unnamed one goes."""
    import subprocess
    import sys

    from indexer.jobs.sweep import dead_decode_folders
    from model.media import decode_folder_prefix

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    dead = tmp_path / f"cavsync-{int(gone.stdout)}-abc123"
    mine = tmp_path / f"{decode_folder_prefix()}def456"
    upload, young, old = tmp_path / "cavsync-upload-x1", tmp_path / "cavsync-k2j3h4", tmp_path / "cavsync-z9y8x7"
    for folder in (dead, mine, upload, young, old):
        folder.mkdir()
        (folder / "audio.s16").write_bytes(b"\0" * 16)
    _aged(old, 7 * 3600)
    assert sorted(dead_decode_folders(tmp_path)) == sorted([dead, old])
    assert [p.exists() for p in (dead, mine, upload, young, old)] == [False, True, True, True, False]
