"""Sustained search load on the API, over loopback: throughput, latency, errors and server memory.

Starts `cavsync serve` on a free loopback port over the demo index (`make demo` builds it in
data/demo), or targets a running server with --url (give --pid to sample its memory too). Then, for
--seconds, --concurrency clients (httpx.AsyncClient) send searches, interleaving the --endpoints: uploads of
the demo clips to /search/audio-to-video and /search/video-to-audio (the default), and optionally
`tokens`: the stored tokens of indexed videos to /search/tokens (no decoding, no encoder). Every
request has a timeout; the server's resident memory (VmRSS of its process and children, /proc) is
sampled every second. Prints one JSON summary: requests, errors, `rejected_503` apart from the
errors (every inference slot busy past CAVSYNC_INFERENCE_WAIT_S), req/s, p50/p99 latency (overall
and per endpoint, of the answered requests), RSS at the start, at the end, min and max.

More clients than the server's inference slots (8 against the default 4) queue: the server this
bench starts waits up to --inference-wait-s (30 s) for a free slot before it answers 503, where the
service's default is 0 (503 at once). A server given with --url keeps its own setting.

    python bench/bench_load.py [--data-dir data/demo] [--seconds 60] [--concurrency 8]
    python bench/bench_load.py --url http://127.0.0.1:8000 --pid 1234 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx

from cavsync.settings import Settings

REPO = Path(__file__).resolve().parents[1]
MEDIA_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".wav", ".flac", ".mp3", ".ogg", ".m4a"}
REQUEST_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def _api_key() -> str | None:
    """The write routes' key of the settings (CAVSYNC_API_KEY, read by cavsync.settings like every setting)."""
    key = Settings().api_key
    return key.get_secret_value() if key is not None else None


@contextlib.contextmanager
def serve(
    data_dir: Path, model: Path, log: Path, inference_wait_s: float, startup_s: float = 240.0
) -> Iterator[tuple[str, int]]:
    """`cavsync serve` on a free loopback port over `data_dir` (embedded mode: no broker); yields (url, pid)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAVSYNC_") or k == "CAVSYNC_FFMPEG"} | {
        "CAVSYNC_DATA_DIR": str(data_dir),
        "CAVSYNC_MODEL_PATH": str(model),
        "CAVSYNC_DATABASE_URL": f"sqlite:///{data_dir / 'catalog.db'}",
        "CAVSYNC_MEDIA_ROOTS": json.dumps([str(data_dir / "media")]),
        # past the server's inference slots a request waits this long, then gets 503 (counted as rejected)
        "CAVSYNC_INFERENCE_WAIT_S": str(inference_wait_s),
    }
    if key := _api_key():
        env["CAVSYNC_API_KEY"] = key
    script = Path(sys.executable).with_name("cavsync")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "cavsync.cli"]
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*head, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while not _healthy(url):
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not answer /health within {startup_s:.0f} s; see {log}")
            time.sleep(0.5)
        yield url, process.pid
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=20)


def _tree(pid: int) -> list[int]:
    """A process and its descendants (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(child) for child in (task / "children").read_text().split())
    return found


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process tree in MiB (VmRSS), None once the process is gone."""
    total = 0
    for member in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024 if total else None


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))]


def _latency(values: list[float]) -> dict:
    ordered = sorted(values)
    ms = {
        "p50": _percentile(ordered, 0.5),
        "p99": _percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else None,
        "mean": sum(ordered) / len(ordered) if ordered else None,
    }
    return {k: None if v is None else round(v * 1000, 1) for k, v in ms.items()}


async def _sample_rss(pid: int, samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        value = rss_mib(pid)
        if value is not None:
            samples.append(value)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


async def _token_queries(client: httpx.AsyncClient, count: int) -> list[tuple[str, dict]]:
    """/search/tokens bodies: the stored audio tokens of the first clip of up to `count` indexed videos."""
    page = (await client.get("/videos", params={"limit": count, "status": "indexed"})).raise_for_status().json()
    bodies = []
    for video in page["items"]:
        stored = (await client.get(f"/videos/{video['id']}/embeddings")).raise_for_status().json()
        audio = next((c["audio"] for c in stored["clips"] if c["audio"] is not None), None)
        if audio is not None:
            bodies.append((f"video {video['id']}", {"tokens": audio, "target": "visual"}))
    if not bodies:
        raise SystemExit("no indexed video with audio tokens for /search/tokens")
    return bodies


async def load(
    url: str,
    queries: list[tuple[str, bytes]],
    endpoints: list[str],
    seconds: float,
    concurrency: int,
    top_k: int,
    pid: int | None,
    api_key: str | None,
) -> dict:
    """Run the load; returns the summary."""
    latencies: dict[str, list[float]] = {e: [] for e in endpoints}
    errors: dict[str, int] = {e: 0 for e in endpoints}
    rejected: dict[str, int] = {e: 0 for e in endpoints}  # 503: every inference slot busy (back-pressure)
    error_samples: list[str] = []
    headers = {"X-API-Key": api_key} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    form = {"top_k": str(top_k), "strategy": "diagonal_mean"}

    async def post(client: httpx.AsyncClient, endpoint: str, name: str, query: bytes | dict) -> httpx.Response:
        if isinstance(query, dict):  # raw tokens
            return await client.post(f"/search/{endpoint}", json=query | {"top_k": top_k})
        return await client.post(f"/search/{endpoint}", files={"file": (name, query)}, data=form)

    async def request(client: httpx.AsyncClient, endpoint: str, name: str, query: bytes | dict) -> None:
        start, response = time.perf_counter(), None
        try:
            response = await post(client, endpoint, name, query)
            ok = response.status_code == 200
            problem = f"{endpoint} {name}: HTTP {response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            ok, problem = False, f"{endpoint} {name}: {type(exc).__name__} {exc}"
        if ok:
            latencies[endpoint].append(time.perf_counter() - start)
        elif response is not None and response.status_code == 503:
            rejected[endpoint] += 1
        else:
            errors[endpoint] += 1
            if len(error_samples) < 5:
                error_samples.append(problem)

    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits, headers=headers) as client:
        per_endpoint = {
            e: await _token_queries(client, len(queries)) if e == "tokens" else list(queries) for e in endpoints
        }
        # the endpoints interleaved, each cycling through its queries
        jobs = itertools.cycle(
            [
                (e, *per_endpoint[e][i % len(per_endpoint[e])])
                for i in range(max(map(len, per_endpoint.values())))
                for e in endpoints
            ]
        )
        for endpoint in endpoints:  # warm-up, not counted
            (await post(client, endpoint, *per_endpoint[endpoint][0])).raise_for_status()
        stop, samples = asyncio.Event(), []
        sampler = asyncio.create_task(_sample_rss(pid, samples, stop)) if pid else None
        await asyncio.sleep(0)
        begin = time.perf_counter()
        deadline = begin + seconds

        async def client_loop() -> None:
            while time.perf_counter() < deadline:
                await request(client, *next(jobs))

        # bounded: each loop stops at the deadline; a request in flight then ends within its own timeout
        await asyncio.wait_for(
            asyncio.gather(*(client_loop() for _ in range(concurrency))), timeout=seconds + REQUEST_TIMEOUT_S + 10
        )
        elapsed = time.perf_counter() - begin
        stop.set()
        if sampler:
            await sampler
    every = [x for values in latencies.values() for x in values]
    count = len(every) + sum(errors.values()) + sum(rejected.values())
    return {
        "url": url,
        "seconds": round(elapsed, 2),
        "concurrency": concurrency,
        "top_k": top_k,
        "query_files": len(queries),
        "requests": count,
        "errors": sum(errors.values()),
        "rejected_503": sum(rejected.values()),
        "throughput_rps": round(len(every) / elapsed, 2),
        "latency_ms": _latency(every),
        "per_endpoint": {
            e: {
                "ok": len(latencies[e]),
                "errors": errors[e],
                "rejected_503": rejected[e],
                "latency_ms": _latency(latencies[e]),
            }
            for e in endpoints
        },
        "error_samples": error_samples,
        "server_rss_mib": None
        if not samples
        else {
            "start": round(samples[0], 1),
            "end": round(samples[-1], 1),
            "max": round(max(samples), 1),
            "min": round(min(samples), 1),
            "samples": len(samples),
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }


def _queries(folder: Path, limit: int) -> list[tuple[str, bytes]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
    if not files:
        raise SystemExit(f"no media files under {folder}: run `make demo` first (or pass --media)")
    return [(p.name, p.read_bytes()) for p in files[:limit]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="A running server (default: start one over --data-dir).")
    parser.add_argument("--pid", type=int, help="With --url: the server's process id, to sample its memory.")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "demo", help="The demo data dir.")
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "cavsync_tiny_demo.safetensors")
    parser.add_argument("--media", type=Path, help="Query files (default: <data-dir>/media).")
    parser.add_argument("--max-queries", type=int, default=16, help="How many distinct query files to cycle through.")
    parser.add_argument(
        "--endpoints",
        default="audio-to-video,video-to-audio",
        help="Comma-separated /search/... endpoints: audio-to-video, video-to-audio, tokens.",
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument(
        "--inference-wait-s",
        type=float,
        default=30.0,
        help="The started server's CAVSYNC_INFERENCE_WAIT_S (0: answer 503 at once when busy).",
    )
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    queries = _queries(args.media or data_dir / "media", args.max_queries)
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    api_key = _api_key()

    def run(url: str, pid: int | None) -> dict:
        return asyncio.run(load(url, queries, endpoints, args.seconds, args.concurrency, args.top_k, pid, api_key))

    if args.url:
        summary = run(args.url.rstrip("/"), args.pid)
    else:
        if not (data_dir / "index").exists():
            raise SystemExit(f"no index in {data_dir}: run `make demo` first (or pass --data-dir / --url)")
        log = data_dir / "bench_load_server.log"
        with serve(data_dir, args.model.resolve(), log, args.inference_wait_s) as (url, pid):
            summary = run(url, pid)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
