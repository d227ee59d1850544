"""The `cavsync` command line: help everywhere (`-h`), `train`'s flags generated from TrainConfig, the same
default model for `serve` and `index` wherever they run, `index` failing loudly, configuration errors that
name the setting and its value; `serve` is uvicorn on the service built from the settings; help in well under
2 s (no torch imported for it); `index` saying what it reads and refusing what it cannot; `search` answering as
the API does."""

from __future__ import annotations

import dataclasses
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
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cavsync.cli import app
from cavsync.settings import DEMO_CHECKPOINT
from training.config import TrainConfig

from ..model.media_files import ffmpeg
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
    recipe = TrainConfig("d", "o")  # the recipe's defaults
    objective = dataclasses.replace(recipe.objective, lambda_c=0.01, symmetric_contrastive=True)
    changed = {"gather_negatives": False, "betas": (0.9, 0.99), "bf16": True, "epochs": 3, "objective": objective}
    assert given == [dataclasses.replace(recipe, **changed), recipe]  # the flags given, and nothing else
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


HEAVY = ("torch", "faiss", "timm", "sqlalchemy", "fastapi", "celery", "indexer", "service", "model.network")


def test_importing_the_cli_loads_no_heavy_module_and_help_is_fast() -> None:
    """`cavsync -h` answers in well under 2 s: the command line imports torch, the model, the indexer and the
    service only inside the commands that use them (measured next to `python -c 'import typer'`)."""
    script = "import sys, cavsync.cli; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", script], env=_clean_env(), capture_output=True, text=True, timeout=60
    )
    assert loaded.returncode == 0, loaded.stderr
    modules = set(loaded.stdout.split())
    assert "cavsync.cli" in modules and not [m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY]

    def best_of_3(*args: str) -> float:
        times = []
        for _ in range(3):
            started = time.monotonic()
            done = subprocess.run([sys.executable, *args], env=_clean_env(), capture_output=True, timeout=60)
            times.append(time.monotonic() - started)
            assert done.returncode == 0, done.stderr
        return min(times)

    typer_s = best_of_3("-c", "import typer")
    for module, command in [("cavsync.cli", c) for c in ([], ["index"], ["search"])] + [("cavsync", ["train"])]:
        help_s = best_of_3("-m", module, *command, "-h")  # `-m cavsync`: how torchrun starts `cavsync train`
        assert help_s < 2.0, f"cavsync {' '.join(command)} -h took {help_s:.2f} s (import typer: {typer_s:.2f} s)"


def test_strategy_choices_are_the_models() -> None:
    from cavsync.cli import StrategyName
    from model import STRATEGIES

    assert tuple(s.value for s in StrategyName) == tuple(STRATEGIES)


def test_index_says_what_it_reads_and_refuses_what_it_cannot(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    (empty / "notes" / "readme.md").write_text("no media here")
    nothing = runner.invoke(app, ["index", str(empty), *data])
    assert nothing.exit_code == 1 and f"no media file under {empty}" in nothing.stderr, nothing.output
    for name, text, reason in (
        ("broken.jsonl", "{not json\n", "not a valid manifest"),
        ("columns.csv", "file,label\na.mp4,dog\n", "no 'path' field/column"),
        ("prose.txt", "Dear diary,\ntoday I indexed nothing.\n", "none of the 2 paths"),
        ("notes.dat", "plain words, no media\n" * 40, "is neither a media file"),
    ):
        (tmp_path / name).write_text(text)
        refused = runner.invoke(app, ["index", str(tmp_path / name), *data])
        assert refused.exit_code == 2 and reason in refused.stderr, (name, refused.output)
    assert "reading" in runner.invoke(app, ["index", str(tmp_path / "prose.txt"), *data]).stderr
    assert not (tmp_path / "data" / "index").exists()  # nothing was written for any of them


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_manifest_is_announced_then_indexed(corpus: Corpus, tmp_path: Path) -> None:
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{corpus.clips[0]}\n")
    done = runner.invoke(app, ["index", str(manifest), "--workers", "1", "--data-dir", str(tmp_path / "data")])
    assert done.exit_code == 0, done.output
    assert f"reading {manifest} as a manifest of 1 paths" in done.stderr
    assert json.loads(done.stdout)["indexed"] == 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_search_ranks_videos_and_moments_as_the_api_does(corpus: Corpus, client: TestClient, tmp_path: Path) -> None:
    data = ["--data-dir", str(corpus.data)]
    excerpt = tmp_path / "excerpt.wav"
    ffmpeg("-ss", "2", "-t", "4", "-i", str(corpus.clips[6]), "-vn", "-ac", "1", str(excerpt))
    table = runner.invoke(app, ["search", str(excerpt), "--top-k", "3", *data], env={"COLUMNS": "300"})
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].startswith("visual tracks searched with file (6 frames), diagonal_mean, index v"), lines
    assert lines[1].split()[:4] == ["#", "score", "video", "moments"] and len(lines) == 5
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["1", "2", "3"]

    answer = json.loads(runner.invoke(app, ["search", str(excerpt), "--top-k", "3", "--json", *data]).stdout)
    with excerpt.open("rb") as handle:
        api = client.post("/search/audio-to-video", files={"file": ("e.wav", handle)}, data={"top_k": "3"}).json()
    assert answer["query"] == api["query"] | {"source": "file"}
    assert [(r["video_id"], r["score"], r["moments"]) for r in answer["results"]] == [
        (r["video_id"], r["score"], r["moments"]) for r in api["results"]
    ]
    for row, hit in zip(rows, answer["results"], strict=True):  # the table shows the same answer
        assert (float(row[1]), int(row[2])) == (round(hit["score"], 3), hit["video_id"]) and row[-1] == hit["uri"]
        assert f"{hit['moments'][0]['start']:.2f}-{hit['moments'][0]['end']:.2f}: " in " ".join(row)

    by_id = ["search", "--video-id", "4", "--start", "2", "--end", "5.2", "--direction", "video-to-audio"]
    by_id += ["--moments", "1", "--strategy", "mean", "--json"]
    answer = json.loads(runner.invoke(app, [*by_id, *data]).stdout)
    form = {"video_id": "4", "start": "2", "end": "5.2", "moments": "1", "strategy": "mean"}
    api = client.post("/search/video-to-audio", data=form).json()
    assert (answer["target"], answer["strategy"], answer["query"]) == ("audio", "mean", api["query"])
    assert [(r["video_id"], r["moments"]) for r in answer["results"]] == [
        (r["video_id"], r["moments"]) for r in api["results"]
    ]

    for args, code, message in (
        (["search", str(tmp_path / "gone.wav")], 2, "no such file"),
        (["search", str(excerpt), "--video-id", "3"], 2, "one of them"),
        (["search", str(excerpt), "--start", "1"], 2, "with --video-id"),
        (["search", "--video-id", "999"], 2, "no indexed video 999"),
        (["search", str(Path(__file__))], 2, "test_cli.py"),  # not media: the decoder's reason
    ):
        refused = runner.invoke(app, [*args, *data], env={"COLUMNS": "300"})
        assert refused.exit_code == code and message in refused.output, (args, refused.output)
    empty = runner.invoke(app, ["search", str(excerpt), "--data-dir", str(tmp_path / "nothing")])
    assert empty.exit_code == 1 and "no index in" in empty.stderr, empty.output


def test_the_demo_checks_its_port_first(tmp_path: Path) -> None:
    """`make demo` on a busy DEMO_PORT fails at once (no corpus generated) and says what to change."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = _clean_env(BIN=str(Path(sys.executable).parent), DEMO_PORT=str(port), DEMO_DATA=str(tmp_path / "demo"))
        started = time.monotonic()
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1 and time.monotonic() - started < 10, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "DEMO_PORT=" in done.stderr, done.stderr
    assert not (tmp_path / "demo" / "media" / "synth").exists()  # nothing was done before the check


def test_a_rule_over_several_settings_is_a_usage_error_that_prints_no_secret() -> None:
    """A setting that breaks a rule over several (the reconcile interval must be under the lease) is exit 2 with
    the rule's message, not a traceback; the settings given with it (an API key) are not printed."""
    env = {"CAVSYNC_RECONCILE_INTERVAL_S": "100", "CAVSYNC_API_KEY": "s3cret-key-value", "COLUMNS": "300"}
    refused = runner.invoke(app, ["migrate"], env=env)
    assert refused.exit_code == 2, refused.output
    assert "CAVSYNC_RECONCILE_INTERVAL_S=100.0 must be under CAVSYNC_LEASE_S=60.0" in refused.output
    assert "s3cret-key-value" not in refused.output and "Traceback" not in refused.output
