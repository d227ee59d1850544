"""The `cavsync` command line: help everywhere (`-h`), `train`'s flags generated from TrainConfig, the same
default model for `serve` and `index` wherever they run, `index` failing loudly, configuration errors that
name the setting and its value; `serve` is uvicorn on the service built from the settings."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cavsync.cli import app
from cavsync.settings import DEMO_CHECKPOINT
from training.config import TrainConfig, parse_args

from .conftest import CORPUS_CLIPS, REPO, Corpus

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    """This shell's environment without any CAVSYNC_* setting (the machine's ffmpeg choice aside)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAVSYNC_") or k == "CAVSYNC_FFMPEG"}
    return env | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"} | extra


def test_help_answers_to_h_and_help_on_every_command() -> None:
    for args in ([], ["index"], ["serve"], ["train"], ["eval"], ["eval", "retrieval"]):
        short, long = runner.invoke(app, [*args, "-h"]), runner.invoke(app, [*args, "--help"])
        assert short.exit_code == 0 and short.output == long.output and "Usage: " in short.output, args


def test_train_flags_are_generated_from_trainconfig_with_help_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    text = runner.invoke(app, ["train", "-h"]).output
    for line in ("--batch-size", "Global batch", "[default: 512]", "--objective.lambda-c", "[default: 0.1]"):
        assert line in text, line
    assert "--no-gather-negatives" in text and "--tensorboard" in text
    given: list[TrainConfig] = []
    monkeypatch.setattr("training.pretrain.train", lambda config: given.append(config) or Path("m"))
    args = ["--data", "d", "--out-dir", "o", "--objective.lambda-c", "0.01", "--no-gather-negatives"]
    args += ["--objective.symmetric-contrastive", "--betas", "0.9", "0.99", "--bf16", "--epochs", "3"]
    assert runner.invoke(app, ["train", *args]).exit_code == 0
    assert runner.invoke(app, ["train", "--data", "d", "--out-dir", "o"]).exit_code == 0
    assert given == [parse_args(args), parse_args(["--data", "d", "--out-dir", "o"])]  # torchrun's flags agree
    assert given[0].objective.lambda_c == 0.01 and not given[0].gather_negatives and given[0].betas == (0.9, 0.99)
    assert given[1] == TrainConfig("d", "o")  # the recipe's defaults
    missing = runner.invoke(app, ["train", "--data", "d"])
    assert missing.exit_code == 2 and "--out-dir" in missing.output


def test_configuration_errors_name_the_setting_and_its_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("CAVSYNC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CAVSYNC_MAX_UPLOAD_BYTES", "lots")
    wrong = runner.invoke(app, ["compact", "--data-dir", str(tmp_path)])
    assert wrong.exit_code == 2 and "CAVSYNC_MAX_UPLOAD_BYTES" in wrong.output and "'lots'" in wrong.output
    monkeypatch.delenv("CAVSYNC_MAX_UPLOAD_BYTES")
    monkeypatch.setenv("CAVSYNC_MODEL_PATH", str(tmp_path / "gone.safetensors"))
    for command in (["serve"], ["index", str(tmp_path)]):
        missing = runner.invoke(app, command, env={"COLUMNS": "300"})
        assert missing.exit_code == 2, missing.output
        assert f"CAVSYNC_MODEL_PATH={tmp_path / 'gone.safetensors'}: no such checkpoint file" in missing.output


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_index_with_the_default_model_exits_non_zero_when_a_file_failed(corpus: Corpus, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(corpus.clips[0], media / "good.mp4")
    (media / "broken.mp4").write_bytes(b"not a video")
    command = [sys.executable, "-m", "cavsync.cli", "index", str(media), "--workers", "1"]
    done = subprocess.run(command, cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["indexed"], summary["failed"]) == (1, 1) and "broken.mp4" in next(iter(summary["errors"]))
    assert "1 of 2 file(s) failed" in done.stderr
    assert (tmp_path / "data" / "index" / "CURRENT").read_text().startswith("v")  # the default data dir: ./data
    again = subprocess.run(
        [*command[:4], str(media / "good.mp4")], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True
    )
    assert again.returncode == 0 and json.loads(again.stdout)["skipped"] == 1, again.stderr  # same default model


@pytest.mark.slow
def test_serve_from_any_folder_with_no_settings_serves_the_demo_model(corpus: Corpus, tmp_path: Path) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "cavsync.cli", "serve", "--port", str(port), "--data-dir", str(corpus.data)]
    log = (tmp_path / "serve.log").open("wb")
    env = _clean_env(CAVSYNC_MAX_CONCURRENT_INFERENCES="1")
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
            body = health.json()
            assert body["model"]["path"] == str(DEMO_CHECKPOINT) and body["index"]["clips"] == CORPUS_CLIPS
            with corpus.clips[0].open("rb") as clip:
                found = client.post("/search/audio-to-video", files={"file": (clip.name, clip)}, data={"top_k": "1"})
            assert found.status_code == 200 and found.json()["results"][0]["video_id"] == 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    assert server.returncode in (0, -signal.SIGTERM)
