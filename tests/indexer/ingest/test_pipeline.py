"""The indexing pipeline end to end: real files, real model, SQLite catalog, kill and rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select

from indexer.catalog.tables import Clip, Video, VideoStatus, open_catalog
from indexer.ingest.pipeline import Indexer, delete_videos, list_media, model_id_of
from indexer.search.ranking import search
from indexer.store.token_store import TokenStore
from model.similarity import TIE_TOLERANCE

REPO = Path(__file__).resolve().parents[3]


def _counts(url: str) -> tuple[int, int, int]:
    sessions = open_catalog(url)
    with sessions() as session:
        indexed = session.scalar(select(func.count()).select_from(Video).where(Video.status == VideoStatus.INDEXED))
        failed = session.scalar(select(func.count()).select_from(Video).where(Video.status == VideoStatus.FAILED))
        clips = session.scalar(select(func.count()).select_from(Clip))
    return indexed, failed, clips


@pytest.mark.slow
def test_index_search_skip_and_failures(media: Path, checkpoint: Path, tmp_path: Path) -> None:
    from model import load_model

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    store = TokenStore(tmp_path / "index")
    model = load_model(checkpoint)
    indexer = Indexer(model, model_id_of(checkpoint), store, open_catalog(url), workers=2, batch_clips=4)
    summary = indexer.index(list_media(media), show_progress=False)
    assert (summary.indexed, summary.failed, summary.skipped, summary.clips) == (10, 1, 0, 10)
    assert "broken.mp4" in next(iter(summary.errors)) and "ffmpeg failed" in next(iter(summary.errors.values()))
    assert _counts(url) == (10, 1, 10)
    version = store.open()
    assert len(version) == 10
    query = version.gather("audio", version.rows_of([3]))[0]
    assert search(version, query, target="audio", k=1)[0].clip_id == 3
    again = indexer.index(list_media(media), show_progress=False)
    assert (again.indexed, again.skipped, again.failed) == (0, 10, 1)
    assert _counts(url) == (10, 1, 10) and len(store.open()) == 10  # no duplicates, one failure row


@pytest.mark.integration
@pytest.mark.slow
def test_killed_run_finishes_with_no_duplicate_and_no_loss(media: Path, checkpoint: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    cmd = [
        sys.executable,
        "-m",
        "cavsync.cli",
        "index",
        str(media),
        "--model",
        str(checkpoint),
        "--data-dir",
        str(data),
        "--batch-clips",
        "2",
        "--workers",
        "1",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    url = f"sqlite:///{data / 'catalog.db'}"
    while proc.poll() is None and time.monotonic() < deadline:
        if (data / "catalog.db").exists() and _counts(url)[0] >= 3:
            break
        time.sleep(0.1)
    workers = _children(proc.pid)  # its decode workers
    assert workers, "the run had no decode worker to orphan"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    gone = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < gone:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "decode workers outlived their killed run"
    interrupted = _counts(url)[0]
    assert 3 <= interrupted < 10, f"the run was not interrupted mid-way ({interrupted} indexed)"
    finished = subprocess.run(cmd, cwd=REPO, env=env, timeout=300, capture_output=True, text=True)
    assert finished.returncode == 1 and "1 of " in finished.stderr, finished.stderr  # broken.mp4 failed again
    assert _counts(url) == (10, 1, 10)
    version = TokenStore(data / "index").open()
    sessions = open_catalog(url)
    with sessions() as session:
        catalog_clips = sorted(session.scalars(select(Clip.id)).all())
    assert sorted(version.clip_ids[version.live].tolist()) == catalog_clips  # every clip once, none lost


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, ...
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _video_hits(version, sessions, query, target, **options):  # noqa: ANN001, ANN003, ANN202
    """The retrieval core's tracks as (video, hit), indexed videos only (what the service answers)."""
    from indexer.catalog.queries import indexed_videos_of_clips
    from indexer.search.ranking import search

    hits = search(version, query, target=target, k=24, **options)
    videos = indexed_videos_of_clips(sessions, [h.clip_id for h in hits])
    return [(videos[h.clip_id], h) for h in hits if h.clip_id in videos]


@pytest.mark.slow
def test_video_results_with_moments(media: Path, checkpoint: Path, tmp_path: Path) -> None:
    from model import load_model

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    store, sessions = TokenStore(tmp_path / "index"), open_catalog(url)
    Indexer(load_model(checkpoint), model_id_of(checkpoint), store, sessions, workers=1).index(
        list_media(media), show_progress=False
    )
    version = store.open()
    excerpt = version.gather("audio", version.rows_of([2]))[0, 5:10]  # frames 5..9 of clip 2
    with sessions() as session:
        found = _video_hits(version, sessions, excerpt, "audio")
        assert len({v.id for v, _ in found}) == len(found) >= 3
        video, best = found[0]
        assert best.clip_id == 2
        # this untrained model's tokens differ little from frame to frame: the windows around 5 may tie
        tokens, query = torch.from_numpy(version.gather("audio", version.rows_of([2]))[0]), torch.from_numpy(excerpt)
        windows = [float((query * tokens[o : o + 5]).sum(-1).mean()) for o in range(12)]
        moment = best.moments[0]
        assert windows[moment.offset] >= max(windows) - TIE_TOLERANCE and windows.index(max(windows)) == 5
        assert (moment.start, moment.end) == pytest.approx((moment.offset * 0.64, (moment.offset + 5) * 0.64))
        across = _video_hits(version, sessions, excerpt, "visual", moment_from="audio")
        placed = next(h for v, h in across if v.id == video.id)
        assert placed.moments[0].offset == moment.offset  # placed on the audio track, where the audio search put it
        assert session.get(Video, video.id).uri == video.uri
    delete_videos([video.id], store, sessions)
    with sessions() as session:
        for exhaustive_store in (store.open(), version):  # the new version, and the one a reader still holds
            assert video.id not in {v.id for v, _ in _video_hits(exhaustive_store, sessions, excerpt, "audio")}


@pytest.mark.slow
def test_a_file_found_at_a_new_place_repairs_its_video(media: Path, checkpoint: Path, tmp_path: Path) -> None:
    """`cavsync index` of a folder that was renamed: the videos point at the new place instead of the dead one."""
    import shutil

    from model import load_model

    folder = tmp_path / "old"
    shutil.copytree(media, folder)
    (folder / "broken.mp4").unlink()
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    store, sessions = TokenStore(tmp_path / "index"), open_catalog(url)
    indexer = Indexer(load_model(checkpoint), model_id_of(checkpoint), store, sessions)
    assert indexer.index(list_media(folder), show_progress=False).indexed == 10
    renamed = folder.rename(tmp_path / "new")
    again = indexer.index(list_media(renamed), show_progress=False)
    assert (again.indexed, again.skipped) == (0, 10)
    with open_catalog(url)() as session:
        uris = sorted(v.uri for v in session.scalars(select(Video)).all())
        sizes = {v.file_size for v in session.scalars(select(Video)).all()}
    assert uris == sorted(str(p.resolve()) for p in renamed.glob("*.mp4")) and None not in sizes
