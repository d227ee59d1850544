"""`cavsync serve`: uvicorn on create_app() with the settings of the environment and the options."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .conftest import CORPUS_CLIPS, DEMO_CHECKPOINT, REPO, Corpus


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve(corpus: Corpus, tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAVSYNC_")} | {
        "PYTHONPATH": str(REPO),
        "CAVSYNC_MODEL_PATH": str(DEMO_CHECKPOINT),
        "CAVSYNC_MAX_CONCURRENT_INFERENCES": "1",
    }
    command = [
        sys.executable,
        "-m",
        "cavsync.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(corpus.data),
    ]
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline, health = time.monotonic() + 180, None
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    health = client.get("/health")
                    break
                except httpx.TransportError:
                    time.sleep(0.5)
            assert health is not None and health.status_code == 200, (tmp_path / "serve.log").read_text()
            assert health.json()["index"]["clips"] == CORPUS_CLIPS
            with corpus.clips[0].open("rb") as clip:
                found = client.post("/search/audio-to-video", files={"file": (clip.name, clip)}, data={"top_k": "1"})
            assert found.status_code == 200 and found.json()["results"][0]["video_id"] == 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    assert server.returncode in (0, -signal.SIGTERM)
