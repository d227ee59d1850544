"""docker-compose.yml and the images, without a Docker engine: the file's structure (services,
healthchecks, start order, named volumes, a scalable worker, paths that agree with each other), the
Dockerfiles against it, then the stack itself: the compose file's own migrate, worker and api commands
and environment, translated to this machine (hostnames -> 127.0.0.1, a fresh PostgreSQL database,
Redis db 13, container paths -> a temp folder), run as processes; clips indexed through the API and
the Celery worker, then found by a search over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from ..conftest import redis_db

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILES = (REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.gpu")
BROKER = os.environ.get("CAVSYNC_TEST_COMPOSE_REDIS", "redis://127.0.0.1:6379/13")
APP_SERVICES = ("api", "worker")
CHECKPOINT_VOLUME_TARGET = "/opt/cavsync/checkpoints"  # the image bakes the demo checkpoint in here


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${NAME:-default}` / `${NAME-default}` / `${NAME:+alternative}` / `${NAME}` / `$$`, with the
    variables of `env` set (none: the defaults)."""

    def one(match: re.Match[str]) -> str:
        name, operator, word = match.group(1), match.group(2) or "", match.group(3) or ""
        set_to = (env or {}).get(name, "")
        if operator == ":+":
            return word if set_to else ""
        return set_to or word

    value = re.sub(r"\$\{(\w+)(?:(:?[-+])([^}]*))?\}", one, value)
    return value.replace("$$", "$")


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    # a name without a value passes the shell's variable through: unset here, so unset there
    return {k: _interpolate(str(v)) for k, v in env.items() if v is not None}


def _volumes(service: dict) -> dict[str, str]:
    """target -> source of a service's volumes (short syntax `source:target[:mode]` or the long one)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        mounts[target] = source
    return mounts


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# ------------------------------------------------------------------------------------------------
# The file's structure


def test_services_healthchecks_and_start_order(compose: dict) -> None:
    services = compose["services"]
    assert {"api", "worker", "redis", "postgres"} <= set(services)
    assert _interpolate(services["redis"]["image"]).split(":")[1].startswith("7")
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert _interpolate(services["postgres"]["image"]).split(":")[1].startswith("16")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["api"]["healthcheck"]["test"])
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        if "migrate" in services:  # the catalog schema is brought up to date once, before anyone uses it
            assert depends["migrate"]["condition"] == "service_completed_successfully", name
    if "migrate" in services:
        assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_api_is_published_beyond_loopback_only_with_every_route_locked(
    compose: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 28: by default the API's port is published on 127.0.0.1 only; CAVSYNC_BIND (another address) also
    sets CAVSYNC_API_ACCESS=all, which refuses to start without CAVSYNC_API_KEY."""
    from pydantic import ValidationError

    from cavsync.settings import Settings

    api = compose["services"]["api"]
    [published] = api["ports"]
    assert _interpolate(published) == "127.0.0.1:8000:8000"
    assert _interpolate(published, {"CAVSYNC_BIND": "0.0.0.0"}) == "0.0.0.0:8000:8000"
    access = str(api["environment"]["CAVSYNC_API_ACCESS"])
    for name in [n for n in os.environ if n.startswith("CAVSYNC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CAVSYNC_API_ACCESS", _interpolate(access))
    assert Settings().api_access == "writes"  # loopback: today's behaviour (the variable set, but empty)
    monkeypatch.setenv("CAVSYNC_API_ACCESS", _interpolate(access, {"CAVSYNC_BIND": "0.0.0.0"}))
    with pytest.raises(ValidationError, match="CAVSYNC_API_ACCESS=all needs CAVSYNC_API_KEY"):
        Settings()
    monkeypatch.setenv("CAVSYNC_API_KEY", "k")
    assert Settings().api_access == "all"


def test_worker_scales(compose: dict) -> None:
    worker = compose["services"]["worker"]
    # `docker compose up --scale worker=N`: no fixed name, no fixed host port, no fixed hostname
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    assert worker["command"][:4] == ["celery", "-A", "cavsync.worker", "worker"]


def test_named_volumes_and_paths_agree(compose: dict) -> None:
    services, declared = compose["services"], set(compose.get("volumes") or {})
    assert {"data", "index", "checkpoints", "media"} <= declared
    for name, service in services.items():
        for target, source in _volumes(service).items():
            assert source in declared, f"{name}: {source}:{target} is not a named volume"
    api, worker = services["api"], services["worker"]
    # paths cross the broker (model, data dir, media): api and workers must see the same files at the same paths
    assert _environment(api) == _environment(worker)
    assert _volumes(api) == _volumes(worker)
    assert api["image"] == worker["image"] and api["build"] == worker["build"]
    env, mounts = _environment(api), _volumes(api)
    assert mounts[env["CAVSYNC_DATA_DIR"]] == "data"
    assert mounts[env["CAVSYNC_DATA_DIR"].rstrip("/") + "/index"] == "index"  # TokenStore(data_dir / "index")
    assert _under(env["CAVSYNC_MODEL_PATH"], CHECKPOINT_VOLUME_TARGET)
    assert mounts[CHECKPOINT_VOLUME_TARGET] == "checkpoints"
    media_roots = json.loads(env["CAVSYNC_MEDIA_ROOTS"])
    assert media_roots and all(any(_under(r, t) for t, s in mounts.items() if s == "media") for r in media_roots)
    database = make_url(env["CAVSYNC_DATABASE_URL"])
    postgres_env = _environment(services["postgres"])
    assert database.drivername == "postgresql+psycopg" and database.host == "postgres"
    assert (database.username, database.password, database.database) == (
        postgres_env["POSTGRES_USER"],
        postgres_env["POSTGRES_PASSWORD"],
        postgres_env["POSTGRES_DB"],
    )
    assert make_url(env["CAVSYNC_BROKER_URL"]).host == "redis"


def _dockerfile(path: Path) -> dict[str, list[str]]:
    """Instructions of a Dockerfile (continuation lines joined), keyed by instruction name."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.setdefault(word.upper(), []).append(rest.strip())
    return found


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_agree_with_compose_and_pyproject(path: Path, compose: dict) -> None:
    file = _dockerfile(path)
    api = compose["services"]["api"]
    assert json.loads(file["CMD"][-1]) == api["command"]  # `docker run IMAGE` serves what compose serves
    assert "/health" in file["HEALTHCHECK"][-1]
    assert file["USER"][-1] not in {"root", "0"}
    run = " ".join(file["RUN"])
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for pin in (p for p in pins if p.split("==")[0] in {"torch", "torchvision", "torchaudio"}):
        assert pin in run, f"{path.name} does not install {pin}"
    assert "ffmpeg" in run
    checkpoint = Path(_environment(api)["CAVSYNC_MODEL_PATH"])
    assert any(f"checkpoints/{checkpoint.name} {checkpoint.parent}" in c for c in file["COPY"])
    assert (REPO / "checkpoints" / checkpoint.name).is_file()
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert f"!checkpoints/{checkpoint.name}" in ignored or not any(i.startswith("checkpoints") for i in ignored)


# ------------------------------------------------------------------------------------------------
# The stack, natively


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _native_command(command: list[str], port: int) -> list[str]:
    """A container command for this machine: the venv's executables, loopback, a free port."""
    executable, rest = command[0], list(command[1:])
    if executable == "cavsync":
        script = Path(sys.executable).with_name("cavsync")
        head = [str(script)] if script.exists() else [sys.executable, "-m", "cavsync.cli"]
    elif executable == "celery":
        head = [sys.executable, "-m", "celery"]
    elif executable in {"python", "python3"}:
        head = [sys.executable]
    else:
        raise AssertionError(f"unexpected container command {command}")
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if flag in rest:
            rest[rest.index(flag) + 1] = value
    return head + rest


def _native_environment(compose_env: dict[str, str], paths: dict[str, Path], database_url: str) -> dict[str, str]:
    def path(value: str) -> str:
        for root in sorted(paths, key=len, reverse=True):
            if _under(value, root):
                return str(paths[root]) + value[len(root.rstrip("/")) :]
        raise AssertionError(f"{value} is on no volume of the compose file")

    # nothing of this shell's service settings leaks in (the ffmpeg choice may: it is the machine's)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAVSYNC_") or k == "CAVSYNC_FFMPEG"}
    env |= compose_env
    assert make_url(compose_env["CAVSYNC_DATABASE_URL"]).host == "postgres"
    assert make_url(compose_env["CAVSYNC_BROKER_URL"]).host == "redis"
    env |= {
        "CAVSYNC_DATABASE_URL": database_url,
        "CAVSYNC_BROKER_URL": BROKER,
        "CAVSYNC_DATA_DIR": path(compose_env["CAVSYNC_DATA_DIR"]),
        "CAVSYNC_MODEL_PATH": path(compose_env["CAVSYNC_MODEL_PATH"]),
        "CAVSYNC_MEDIA_ROOTS": json.dumps([path(r) for r in json.loads(compose_env["CAVSYNC_MEDIA_ROOTS"])]),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    return env


class Processes:
    """Processes started in their own session, each with a log file; `stop` ends them all, always."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.running = folder, {}

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            cwd=self.folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.running[name] = process
        return process

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.log(name)}" for name in self.running)

    def check_alive(self) -> None:
        for name, process in self.running.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}\n{self.logs()}")

    def stop(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=20)


@pytest.fixture()
def broker() -> Iterator[str]:
    yield from redis_db(BROKER)


def _wait(condition, timeout_s: float, what: str, processes: Processes, every_s: float = 0.5):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        processes.check_alive()
        result = condition()
        if result:
            return result
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{processes.logs()}")


def _get(client: httpx.Client, path: str) -> httpx.Response | None:
    try:
        return client.get(path)
    except httpx.TransportError:
        return None


def _names(body: dict) -> list[str]:
    """The file names of a search answer's videos, best first."""
    return [Path(hit["uri"]).name for hit in body["results"]]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compose_stack_runs_natively(compose: dict, broker: str, pg_url: str, tmp_path: Path) -> None:
    from training.synth import generate

    services = compose["services"]
    mounts = _volumes(services["api"])
    # container path -> this machine: the checkpoints volume starts as the image's copy of checkpoints/
    paths = {target: tmp_path / source for target, source in mounts.items() if source != "checkpoints"}
    paths[CHECKPOINT_VOLUME_TARGET] = REPO / "checkpoints"
    paths["/data/index"] = paths[_environment(services["api"])["CAVSYNC_DATA_DIR"]] / "index"  # nested, as mounted
    env = _native_environment(_environment(services["api"]), paths, pg_url)
    media_root = Path(json.loads(env["CAVSYNC_MEDIA_ROOTS"])[0])
    clips = sorted(generate(media_root / "synth", 4, seed=31).glob("*.mp4"))
    assert len(clips) == 4
    port = _free_port()
    headers = {"X-API-Key": env["CAVSYNC_API_KEY"]} if env.get("CAVSYNC_API_KEY") else {}

    if "migrate" in services:
        done = subprocess.run(
            _native_command(services["migrate"]["command"], port),
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-4000:]

    processes = Processes(tmp_path)
    try:
        processes.start("worker", _native_command(services["worker"]["command"], port), env)
        processes.start("api", _native_command(services["api"]["command"], port), env)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=headers) as client:
            health = _wait(
                lambda: (r := _get(client, "/health")) is not None and r.status_code == 200 and r,
                240,
                "GET /health",
                processes,
            )
            assert health.json()["status"] == "ok" and health.json()["queue"] == "reachable", health.json()

            # the compose healthcheck itself, pointed at this port
            check = [part.replace(":8000/", f":{port}/") for part in services["api"]["healthcheck"]["test"][1:]]
            done = subprocess.run(_native_command(check, port), env=env, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr

            response = client.post("/index", json={"paths": [str(p) for p in clips]})
            assert response.status_code in (200, 201, 202), response.text
            accepted = response.json()
            assert accepted["mode"] == "broker" and accepted["files"] == len(clips), accepted
            job_id = accepted["job_id"]

            def finished() -> dict | None:
                job = client.get(f"/jobs/{job_id}")
                assert job.status_code == 200, job.text
                body = job.json()
                return body if body.get("state") in {"done", "failed"} else None

            job = _wait(finished, 300, f"job {job_id}", processes, every_s=1.0)
            assert job["state"] == "done", job
            worker_log = processes.log("worker", 1_000_000)
            assert "index_file" in worker_log and "succeeded" in worker_log, processes.logs()  # the worker did it

            query = clips[0]
            with query.open("rb") as handle:
                response = client.post(
                    "/search/audio-to-video",
                    files={"file": (query.name, handle, "video/mp4")},
                    data={"top_k": "4", "strategy": "diagonal_mean"},
                )
            assert response.status_code == 200, response.text
            names = _names(response.json())
            assert query.name in names, names
            assert names[0] == query.name, names
    finally:
        processes.stop()
