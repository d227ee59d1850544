"""docker-compose.yml run for real, in containers: podman + podman-compose, the images built by
docker/local/build.sh from Debian's packages and PyPI (no image registry is reachable here), chosen
through the file's CAVSYNC_IMAGE / CAVSYNC_REDIS_IMAGE / CAVSYNC_POSTGRES_IMAGE variables.

One test walks an operator's first day: build (podman's layer cache makes a second build take
seconds), `up` with the worker scaled to 2, wait until the compose file's own healthchecks pass, copy
clips into the `media` volume, POST /index through the published port, search by sound (the source
first, and the same files and scores as the native `cavsync index` / `cavsync search` give for
the same clips), DELETE a video, SIGKILL one worker container during a second job and see the job
end with every file indexed, then `down -v` and nothing of the project left.

Podman 4.3 (Debian bookworm) has no healthcheck timers without systemd and podman-compose does not
enforce `condition: service_healthy` with it, so the healthchecks are run here with `podman
healthcheck run` (the compose file's commands) and redis/postgres are brought up first; Docker
Compose does both by itself.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import SHARED

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
BUILD = REPO / "docker" / "local" / "build.sh"
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]  # crun refuses here (cgroups v1)
log = logging.getLogger(__name__)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(command: list[str], timeout_s: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=REPO)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _podman_compose() -> list[str]:
    """podman-compose (the dev extra) beside this Python, else on PATH, with podman's flags for this machine."""
    script = Path(sys.executable).with_name("podman-compose")
    found = str(script) if script.exists() else shutil.which("podman-compose")
    assert found, "podman-compose is not installed: `make install` (the dev extra) installs it"
    return [found, "--podman-args=" + " ".join(PODMAN[1:])]


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Builds (or finds in podman's cache) every image; the variables that point the compose file at them."""
    assert shutil.which("podman") and shutil.which("mmdebstrap"), "`make system-deps` installs podman, mmdebstrap"
    started = time.monotonic()
    done = _run(["bash", str(BUILD)], timeout_s=2400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    log.info("images built in %.0f s:\n%s", time.monotonic() - started, done.stderr[-1500:])
    exported = _run(["bash", str(BUILD), "--env"], timeout_s=30).stdout.split()[1:]  # "export A=x B=y C=z"
    variables = dict(item.split("=", 1) for item in exported)
    assert set(variables) == {"CAVSYNC_IMAGE", "CAVSYNC_REDIS_IMAGE", "CAVSYNC_POSTGRES_IMAGE"}, variables
    ids = {image: _image_id(image) for image in variables.values()}
    # a second build with nothing changed comes from podman's layer cache: the same images, in seconds
    started = time.monotonic()
    again = _run(["bash", str(BUILD)], timeout_s=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert time.monotonic() - started < 90, f"a cached rebuild took {time.monotonic() - started:.0f} s"
    assert {image: _image_id(image) for image in variables.values()} == ids
    return variables


def _image_id(image: str) -> str:
    done = _run([*PODMAN, "image", "inspect", "--format", "{{.Id}}", image], timeout_s=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Stack:
    """One compose project (its own name, port, password, network and volumes) and its containers."""

    def __init__(self, images: dict[str, str], tmp_path: Path) -> None:
        self.project = f"cavsynctest{os.getpid()}"
        self.port = _free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CAVSYNC_", "POSTGRES_"))}
        self.env |= images | {"CAVSYNC_PORT": str(self.port), "POSTGRES_PASSWORD": secrets.token_hex(12)}
        self.tmp_path = tmp_path

    def compose(self, *args: str, timeout_s: float = 300) -> str:
        command = [*_podman_compose(), "-p", self.project, "-f", str(COMPOSE), *args]
        done = _run(command, timeout_s=timeout_s, env=self.env)
        assert done.returncode == 0, f"{' '.join(args)}: {done.stdout[-3000:]}{done.stderr[-3000:]}\n{self.logs()}"
        return done.stdout

    def containers(self, service: str | None = None, running: bool = True) -> list[dict[str, Any]]:
        command = [*PODMAN, "ps", "--format", "json", "--filter", f"label=io.podman.compose.project={self.project}"]
        if not running:
            command.insert(len(PODMAN) + 1, "--all")
        listed = json.loads(_run(command, timeout_s=60).stdout or "[]")
        return [c for c in listed if service is None or c["Labels"].get("com.docker.compose.service") == service]

    def healthy(self, service: str) -> bool:
        """Every container of the service passes the compose file's healthcheck (run now, as Docker's timer would)."""
        found = self.containers(service)
        return bool(found) and all(
            _run([*PODMAN, "healthcheck", "run", c["Id"]], timeout_s=30).returncode == 0 for c in found
        )

    def logs(self) -> str:
        out = []
        for container in self.containers(running=False):
            name = container["Names"][0]
            done = _run([*PODMAN, "logs", "--tail", "40", name], timeout_s=30)
            out.append(f"--- {name} ({container['State']}) ---\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return "\n".join(out)

    def wait(self, condition: Callable[[], Any], timeout_s: float, what: str, every_s: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            time.sleep(every_s)
        pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{self.logs()}")

    def copy_media(self, source: str, into: str) -> None:
        """`podman cp` (as `docker compose cp`) into the api container's volumes: `folder/.` copies its files."""
        api = self.containers("api")[0]["Names"][0]
        done = _run([*PODMAN, "cp", source, f"{api}:{into}"], timeout_s=120)
        assert done.returncode == 0, done.stderr

    def down(self) -> None:
        # --remove-orphans: podman-compose's down knows one worker from the file; the second is the "orphan"
        self.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout_s=300)


@pytest.fixture()
def stack(images: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(images, tmp_path)
    try:
        yield stack
    finally:
        try:
            stack.down()
        except AssertionError:  # a failed test's stack: remove what is left, then report
            label = f"label=io.podman.compose.project={stack.project}"
            ids = [c["Id"] for c in stack.containers(running=False)]
            _run([*PODMAN, "rm", "-f", "--depend", *ids], timeout_s=120) if ids else None
            _run([*PODMAN, "pod", "rm", "-f", f"pod_{stack.project}"], timeout_s=120)
            volumes = _run([*PODMAN, "volume", "ls", "-q", "--filter", label], 60).stdout.split()
            _run([*PODMAN, "volume", "rm", "-f", *volumes], timeout_s=120) if volumes else None
            _run([*PODMAN, "network", "rm", "-f", f"{stack.project}_default"], timeout_s=60)
            raise
        assert stack.containers(running=False) == [], "down -v left containers"
        volumes = _run(
            [*PODMAN, "volume", "ls", "-q", "--filter", f"label=io.podman.compose.project={stack.project}"], 60
        )
        assert volumes.stdout.strip() == "", f"down -v left volumes: {volumes.stdout}"


def _job(client: httpx.Client, job_id: str) -> dict | None:
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    return body if body["state"] in {"done", "failed"} else None


def _index(client: httpx.Client, stack: Stack, paths: list[str], files: int) -> str:
    response = client.post("/index", json={"paths": paths})
    assert response.status_code in (200, 201, 202), response.text
    accepted = response.json()
    assert accepted["mode"] == "broker" and accepted["files"] == files, accepted
    return accepted["job_id"]


def _hits(body: dict) -> list[tuple[int, str, float]]:
    """A search answer as (video id, file name, score), best first."""
    return [(hit["video_id"], Path(hit["uri"]).name, hit["score"]) for hit in body["results"]]


def _native_search(clips: Path, query: Path, top_k: int, tmp_path: Path) -> list[tuple[int, str, float]]:
    """The same clips indexed and searched by this checkout's own commands (SQLite catalog, no broker)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAVSYNC_") or k == "CAVSYNC_FFMPEG"}
    env |= {"PYTHONPATH": str(REPO), "CAVSYNC_DATA_DIR": str(tmp_path / "native")}
    env["CAVSYNC_MODEL_PATH"] = str(REPO / "checkpoints" / "cavsync_tiny_demo.safetensors")
    cavsync = [sys.executable, "-m", "cavsync.cli"]
    done = _run([*cavsync, "index", str(clips)], timeout_s=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    done = _run([*cavsync, "search", str(query), "--json", "--top-k", str(top_k)], timeout_s=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return _hits(json.loads(done.stdout))


@pytest.mark.timeout(3000)
def test_compose_stack_in_containers(stack: Stack, tmp_path: Path) -> None:
    from training.synth import generate

    # the compose file's start order, one step at a time (see the module docstring): redis and postgres
    # healthy, migrate run to success, then api and two workers
    stack.compose("up", "-d", "redis", "postgres")
    stack.wait(lambda: stack.healthy("redis") and stack.healthy("postgres"), 120, "redis and postgres healthy")
    # --no-deps: podman 4.3 cannot start a container created with --requires on running ones
    stack.compose("up", "-d", "--no-deps", "--no-recreate", "migrate")
    stack.wait(lambda: not stack.containers("migrate"), 180, "migrate to finish")
    migrate = stack.containers("migrate", running=False)
    assert [c["ExitCode"] for c in migrate] == [0], stack.logs()
    stack.compose("up", "-d", "--no-deps", "--no-recreate", "--scale", "worker=2", "api", "worker")
    assert len(stack.containers("worker")) == 2
    stack.wait(lambda: stack.healthy("api"), 300, "api healthy (GET /health: model, catalog and broker)")

    # clips into the media volume: 4 synthetic ones and the real samples beside the checkout
    media = tmp_path / "media"
    generate(tmp_path / "synth", 4, seed=31)
    media.mkdir()
    for clip in sorted((tmp_path / "synth").glob("*.mp4")) + sorted((SHARED / "media").glob("*.mp4")):
        shutil.copy(clip, media / clip.name)
    clips = sorted(media.glob("*.mp4"))
    assert len(clips) >= 6, f"{SHARED / 'media'}: the real sample clips are missing"
    stack.copy_media(f"{media}/.", "/media/")

    with httpx.Client(base_url=f"http://127.0.0.1:{stack.port}", timeout=120) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["queue"] == "reachable", health

        started = time.monotonic()
        job_id = _index(client, stack, ["/media"], len(clips))
        job = stack.wait(lambda: _job(client, job_id), 900, f"job {job_id}", every_s=2.0)
        log.info("indexed %d clips in the containers in %.1f s", len(clips), time.monotonic() - started)
        assert (job["state"], job["done"], job["failed"]) == ("done", len(clips), 0), job

        query = media / "synth_31_000000.mp4"  # a synthetic clip: what the demo model was trained on
        with query.open("rb") as handle:
            response = client.post(
                "/search/audio-to-video",
                files={"file": (query.name, handle, "video/mp4")},
                data={"top_k": str(len(clips))},
            )
        assert response.status_code == 200, response.text
        hits = _hits(response.json())
        assert hits[0][1] == query.name, hits  # the sound's own video first
        native = _native_search(media, query, len(clips), tmp_path)
        log.info("containers: %s\nnative:     %s", hits, native)
        # the same videos in the same order with the same scores; ids are given as files finish (two workers
        # here, one process natively), so each id is checked against the catalog's own answer instead
        assert [n for _, n, _ in hits] == [n for _, n, _ in native]
        for video_id, name, _ in hits:
            detail = client.get(f"/videos/{video_id}")
            assert detail.status_code == 200 and Path(detail.json()["uri"]).name == name, detail.text
        assert [s for *_, s in hits] == pytest.approx([s for *_, s in native], abs=1e-4)

        # DELETE one video: it leaves search at once
        gone_id, gone_name, _ = hits[-1]
        response = client.delete(f"/videos/{gone_id}")
        assert response.status_code == 200 and response.json()["deleted"], response.text
        with query.open("rb") as handle:
            again = client.post("/search/audio-to-video", files={"file": (query.name, handle, "video/mp4")})
        assert again.status_code == 200 and gone_name not in [n for _, n, _ in _hits(again.json())]

        # a second job; one worker container SIGKILLed while it runs: the job still ends, every file indexed
        second = tmp_path / "second"
        generate(second, 10, seed=47)
        stack.copy_media(str(second), "/media/")  # -> /media/second
        job_id = _index(client, stack, ["/media/second"], 10)

        def running() -> bool:
            state = client.get(f"/jobs/{job_id}").json()["state"]
            assert state not in {"done", "failed"}, "the second job ended before a worker could be killed"
            return state == "running"

        stack.wait(running, 120, "the second job running", every_s=0.2)
        victim = stack.containers("worker")[0]["Names"][0]
        killed = _run([*PODMAN, "kill", "--signal", "KILL", victim], timeout_s=60)
        assert killed.returncode == 0, killed.stderr
        started = time.monotonic()
        job = stack.wait(lambda: _job(client, job_id), 600, f"job {job_id} after a worker was killed", every_s=2.0)
        log.info("second job ended %.1f s after %s was killed: %s", time.monotonic() - started, victim, job["state"])
        assert (job["state"], job["done"], job["failed"]) == ("done", 10, 0), job
