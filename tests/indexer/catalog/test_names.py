"""Issue 28 (6.): a name with NUL, control or bidi characters (an upload's name as sent, a file's name on disk) is
stored and shown with those characters written out (`\\u202e`), the original kept exactly, on SQLite and on
PostgreSQL (which refuses NUL in text); a failed upload is recorded by its sent name, never by its temporary
file."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from indexer.catalog.queries import video_detail, video_file, video_page
from indexer.catalog.tables import JobFile, Video, VideoStatus, display_name, new_video, open_catalog
from indexer.ingest.commit import commit_failure
from indexer.ingest.files import upload_file_name
from indexer.ingest.pipeline import MEDIA_SUFFIXES
from indexer.jobs import supervisor as tasks
from indexer.jobs.context import Resources, TaskContext
from indexer.jobs.records import create_job
from indexer.store.datadir import DataDir
from tests.indexing import job_run

SENT = "a\x00b\x1b[31m\x7f\u202egnp.exe\u2066\u200e\u200f\u061c\u2028.mp4"  # displays as "...exe.png" otherwise
SHOWN = r"a\u0000b\u001b[31m\u007f\u202egnp.exe\u2066\u200e\u200f\u061c\u2028.mp4"


def test_hidden_characters_are_written_out_and_nothing_else_changes() -> None:
    from indexer.catalog.names import BIDI_CONTROLS, shown_name

    assert shown_name(SENT) == SHOWN and shown_name(SHOWN) == SHOWN
    for char in [chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\ud800", "\u2029", *sorted(BIDI_CONTROLS)]:
        assert shown_name(f"x{char}.mp4") == f"x\\u{ord(char):04x}.mp4", hex(ord(char))
    for name in ("café déjà vu.mp4", "日本語 の 動画.webm", "🎵 song (1) [final].m4a", "a\\u202e.mp4"):
        assert shown_name(name) == name
    long = shown_name("x" * 5000 + ".mp4")
    assert len(long) == 1024 and long.endswith("x.mp4")


@pytest.mark.integration
def test_a_name_is_stored_as_shown_and_its_original_kept(catalog_url: str) -> None:
    sessions = open_catalog(catalog_url)
    found_on_disk = "/media/clip\u202e4pm.mkv"  # a file indexed by path: its own name
    with sessions() as session:
        sent = new_video("/data/media/" + "ab" * 32 + ".mp4", "ab" * 32, "m", [(0.0, 10.24, "audio")], name=SENT)
        by_path = new_video(found_on_disk, "cd" * 32, "m", [(0.0, 10.24, "audio")])
        session.add_all([sent, by_path])
        session.commit()  # PostgreSQL stores no NUL: the shown name has none
        commit_failure(session, "", "ef" * 32, "m", "no audio", name=SENT)  # a failed upload: its name alone
        ids = (sent.id, by_path.id)
    with sessions() as session:
        names = session.scalars(select(Video.name).order_by(Video.id)).all()
        assert names == [SHOWN, "clip\\u202e4pm.mkv", SHOWN]

    from indexer.catalog.tables import original_name

    with sessions() as session:
        stored = session.get(Video, ids[0])
        assert stored is not None and original_name(stored) == SENT
        stored.name = stored.name  # the shown name set again keeps the original
        assert original_name(stored) == SENT
    total, rows = video_page(sessions, 10, 0)
    assert total == 3 and [(r.name, r.original_name) for r in rows] == [
        (SHOWN, SENT),
        ("clip\\u202e4pm.mkv", "clip\u202e4pm.mkv"),
        (SHOWN, SENT),
    ]
    detail, file = video_detail(sessions, ids[1]), video_file(sessions, ids[1])
    assert detail is not None and file is not None and file.name == "clip\\u202e4pm.mkv"
    assert display_name(None, found_on_disk) == "clip\\u202e4pm.mkv"  # rows from before names were recorded

    job_id = create_job(sessions, ["/data/uploads/0123456789ab-x.mp4"], [SENT])
    with sessions() as session:
        assert session.scalars(select(JobFile.name).where(JobFile.job_id == job_id)).one() == SHOWN


@pytest.mark.timeout(300)
def test_a_failed_upload_is_recorded_by_its_sent_name_not_its_temporary_file(
    catalog_url: str, checkpoint: Path, tmp_path: Path
) -> None:
    data = DataDir(tmp_path / "data")
    data.uploads.mkdir(parents=True)
    kept = data.uploads / upload_file_name(SENT, MEDIA_SUFFIXES)
    kept.write_bytes(b"not a video" * 100)
    ctx, res = TaskContext(str(checkpoint), DataDir(data.root, catalog_url)), Resources()
    job_id = create_job(res.sessions(catalog_url), [kept], [SENT])
    tasks.dispatch_job(job_run(ctx, res, job_id))
    with res.sessions(catalog_url)() as session:
        [video] = session.scalars(select(Video)).all()
        [row] = session.scalars(select(JobFile).where(JobFile.job_id == job_id)).all()
        assert video.status == VideoStatus.FAILED and video.uri == ""  # no server path: nothing of it is kept
        assert video.error is not None and video.error.startswith(f"{SHOWN}: "), video.error
        assert str(data.uploads) not in video.error and kept.name not in video.error
        assert row.state == "failed" and row.name == SHOWN and row.error == video.error
        from indexer.catalog.tables import original_name

        assert (video.name, original_name(video)) == (SHOWN, SENT)
    assert not kept.exists()
