"""Fault injection on a real stack: its own PostgreSQL and Redis (Debian binaries, free ports, killed and
started by the tests; the shared 5432/6379 ones are never touched), the API under uvicorn and Celery workers
as subprocesses (`python -m uvicorn` / `python -m celery` with this tree on PYTHONPATH). Waits poll a
condition with a deadline."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_CHECKPOINT = REPO / "checkpoints" / "cavsync_tiny_demo.safetensors"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
FINAL = {"done", "failed"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.2) -> Any:
    """Poll `condition` until it returns something truthy (returned); fail the test past the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(every_s)


@dataclass
class Postgres:
    """A private PostgreSQL cluster run as the postgres user (it refuses root)."""

    folder: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        command = ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(self.folder / "data")]
            + ["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.folder / "log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    folder = Path(tempfile.mkdtemp(prefix="cavsync-faults-pg-", dir="/tmp"))
    shutil.chown(folder, "postgres", "postgres")
    server = Postgres(folder)
    server.init()
    server.start()
    yield server
    try:
        server.stop()
    except subprocess.CalledProcessError:
        pass  # already stopped by a test
    shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Redis:
    """A private redis-server without persistence (killing it loses its queue, as in the field report)."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: socket.create_connection(("127.0.0.1", self.port), 1).close() or True, 30, "redis up")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(30)
            self.process = None


@pytest.fixture()
def redis_server() -> Iterator[Redis]:
    server = Redis()
    server.start()
    yield server
    server.kill()


def fresh_database(server: Postgres) -> str:
    """A new empty database on the private cluster; its URL."""
    import psycopg

    name = f"faults_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.url.rsplit("/", 1)[0] + f"/{name}"


def environment(data: Path, **settings: object) -> dict[str, str]:
    """This process's environment with this tree first on PYTHONPATH and the given CAVSYNC_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAVSYNC_")}
    env |= {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CAVSYNC_MODEL_PATH": str(DEMO_CHECKPOINT)}
    env |= {"CAVSYNC_DATA_DIR": str(data), "CAVSYNC_DEVICE": "cpu"}
    env |= {f"CAVSYNC_{k.upper()}": str(v) for k, v in settings.items()}
    return env


@dataclass
class Api:
    """`uvicorn --factory cavsync.app:create_app` in its own process group."""

    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Api:
        args = [sys.executable, "-m", "uvicorn", "--factory", "cavsync.app:create_app", "--port", str(self.port)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                args, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(lambda: httpx.get(f"{self.base}/health", timeout=5).status_code == 200, 120, "the API up")
        return self

    def signal(self, sig: signal.Signals) -> None:
        """SIGKILL to the process group (nothing survives); any other signal to the server alone, as `docker
        stop` or Kubernetes send it."""
        assert self.process is not None
        if sig == signal.SIGKILL:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)
        self.process.wait(60)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGKILL)


@dataclass
class Worker:
    """`celery -A cavsync.worker worker` (its main process and its child) in its own process group."""

    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        args = [sys.executable, "-m", "celery", "-A", "cavsync.worker", "worker", "--concurrency", "1"]
        args += ["--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                args, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def kill(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(60)
            self.process = None


@pytest.fixture()
def processes() -> Iterator[list[Api | Worker]]:
    """Every API and worker a test starts, killed at its end whatever happened."""
    started: list[Api | Worker] = []
    yield started
    for proc in started:
        proc.stop() if isinstance(proc, Api) else proc.kill()


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight distinct short synthetic clips (the media root of the job tests)."""
    from training.synth import generate

    return sorted(generate(tmp_path_factory.mktemp("faults-media"), 8, seed=13).glob("*.mp4"))


def job(api: Api, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{api.base}/jobs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def settled(info: dict[str, Any]) -> int:
    return int(info["done"]) + int(info["skipped"]) + int(info["failed"])


@dataclass
class SearchLoad:
    """Searches by raw tokens, one after the other on ONE keep-alive connection, in a thread; records every
    answer's status (with its Retry-After) and every transport error (a reset connection, a refused one)."""

    base: str
    dim: int
    statuses: list[tuple[int, str | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: Any = None
    _thread: Any = None

    def start(self) -> SearchLoad:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self._stop.is_set():
                body = {"tokens": rng.standard_normal((4, self.dim)).round(4).tolist(), "target": "visual"}
                try:
                    for response in (client.post("/search/tokens", json=body), client.get("/videos")):
                        self.statuses.append((response.status_code, response.headers.get("retry-after")))
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    @property
    def failed(self) -> list[tuple[int, str | None]]:
        """Answers that are errors of the server: any 5xx but a 503 with Retry-After."""
        return [(s, r) for s, r in self.statuses if s >= 500 and not (s == 503 and r)]


def record(fault: str, **figures: object) -> None:
    """Append a measured row to $CAVSYNC_FAULT_REPORT (JSON lines; RELIABILITY.md's table), when set."""
    import json

    target = os.environ.get("CAVSYNC_FAULT_REPORT")
    if target:
        with open(target, "a") as handle:
            handle.write(json.dumps({"fault": fault, **figures}) + "\n")
