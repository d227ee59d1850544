"""Issue 28, item 6 (the end of a video): a time between the start of a video's last frame and its end is that
last frame, for posters and /localize alike (the demo's clips: 10 s at 8 fps, so the last frame starts at
9.875 s and its audio outlasts it), and the time answered is the one used; past the end is still a 422."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from .conftest import Corpus, upload

pytestmark = pytest.mark.slow  # the demo corpus, indexed once per session

LAST_FRAME_S = 10.0 - 1.0 / 8  # the synthetic clips are 8 fps
NEAR_THE_END = (9.89, 9.95, 9.999, 10.0)


def test_posters_at_the_end_are_the_last_frame(writable_client: TestClient) -> None:
    last = writable_client.get("/videos/1/poster", params={"time": LAST_FRAME_S - 0.01})
    assert last.status_code == 200, last.text
    for at in NEAR_THE_END:
        poster = writable_client.get("/videos/1/poster", params={"time": at})
        assert poster.status_code == 200, f"{at}: {poster.text}"
        used = float(poster.headers["x-frame-time"])
        assert LAST_FRAME_S - 0.01 <= used <= LAST_FRAME_S, at
        assert poster.content == last.content, at  # the same frame, encoded the same way
    past = writable_client.get("/videos/1/poster", params={"time": 10.2})
    assert past.status_code == 422 and "past the end" in past.json()["detail"]


@pytest.mark.parametrize("at", NEAR_THE_END)
def test_localize_at_the_end_uses_the_last_frame(client: TestClient, corpus: Corpus, at: float) -> None:
    by_id = client.post("/localize", data={"video_id": 1, "time": at, "audio_video_id": 1})
    assert by_id.status_code == 200, by_id.text
    assert LAST_FRAME_S - 0.01 <= by_id.json()["frame_time"] <= LAST_FRAME_S
    sent = upload(corpus.clips[0], "image") | upload(corpus.clips[0], "audio")
    uploaded = client.post("/localize", files=sent, data={"time": at})
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["frame_time"] == by_id.json()["frame_time"]
