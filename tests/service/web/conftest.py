"""Browser tests of the web page: the real app (the demo checkpoint, the test corpus indexed for real, real
media files) served by uvicorn in a thread on a free 127.0.0.1 port, driven by pytest-playwright in Debian's
headless Chromium (`executable_path`; a browser is never downloaded), with Chromium's fake microphone.

Every request the page makes is routed through a guard that lets only 127.0.0.1 through and records the rest:
a test fails if the page tried to reach any other host (the page must work with the network cut)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvicorn
from playwright.sync_api import Page, Route

from service.app import create_app

from ...conftest import IN_CI, SHARED
from ..conftest import Corpus, make_config

CHROMIUM = os.environ.get("CAVSYNC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# `make screenshots` sets CAVSYNC_SCREENSHOTS=docs/screenshots (the README's); otherwise they go to a temp folder,
# so that a test run leaves the checkout as it was.
SCREENSHOTS = Path(os.environ.get("CAVSYNC_SCREENSHOTS") or Path(tempfile.gettempdir()) / "cavsync-screenshots")
LOCAL_HOSTS = {"127.0.0.1"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    """Debian's chromium, with the fake microphone (a tone) granted without a prompt."""
    if not Path(CHROMIUM).is_file():
        message = f"no Chromium at {CHROMIUM}: `make install` installs Debian's chromium (apt) where missing"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
    ]
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": args}


class Server:
    """uvicorn serving `app` in a thread on a free 127.0.0.1 port (the socket is bound first: no race)."""

    def __init__(self, app: object) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def start(self, timeout_s: float = 120.0) -> Server:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


@pytest.fixture(scope="session")
def web_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the page indexes (under the media root, its parent): a real clip (the shared samples'
    smallest) and a broken file."""
    folder = tmp_path_factory.mktemp("web_media") / "incoming"
    folder.mkdir()
    real = sorted((SHARED / "media").glob("*.mp4"), key=lambda p: p.stat().st_size)
    if not real and IN_CI:
        pytest.fail(f"the shared media samples are missing: {SHARED / 'media'}")
    if real:
        shutil.copy(real[0], folder / real[0].name)
    else:  # outside CI without the shared folder: a synthetic clip stands in
        from training.synth import generate

        shutil.copy(sorted(generate(folder.parent / "synth", 1, seed=99).glob("*.mp4"))[0], folder / "real.mp4")
    (folder / "broken_upload.mp4").write_bytes(b"this is not a video" * 64)
    return folder


@pytest.fixture(scope="session")
def live_server(corpus: Corpus, web_media: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The app over a private copy of the indexed corpus (the page deletes and indexes)."""
    data = Path(shutil.copytree(corpus.data, tmp_path_factory.mktemp("web") / "data"))
    server = Server(create_app(make_config(corpus, data, media_roots=[web_media.parent]))).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict, live_server: Server) -> dict:
    return {**browser_context_args, "base_url": live_server.url, "viewport": {"width": 1280, "height": 900}}


@pytest.fixture()
def outside_requests(page: Page) -> Iterator[list[str]]:
    """Every request of the test's browser context goes through here: 127.0.0.1 passes, anything else is
    aborted and recorded; the test fails if the list is not empty at its end. `page.local_requests` counts
    what passed (so the check is not vacuous)."""
    outside: list[str] = []
    local: list[str] = []

    def guard(route: Route) -> None:
        url = route.request.url
        host = urlsplit(url).hostname
        if url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
            local.append(url)
            route.continue_()
        else:
            outside.append(url)
            route.abort("internetdisconnected")

    page.context.route("**/*", guard)
    page.local_requests = local  # type: ignore[attr-defined]
    yield outside
    assert outside == [], f"the page tried to leave the machine: {outside}"


def shot(page: Page, name: str) -> Path:
    """A screenshot (`<name>.png` in SCREENSHOTS: the README's with `make screenshots`)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


CSP_REPORT = "Content Security Policy"  # in every message Chromium logs for a blocked script, style, fetch...
WATCH_CSP = """document.addEventListener('securitypolicyviolation', e => window.cspViolation(
    `${e.effectiveDirective} blocked ${e.blockedURI || 'inline'} (${e.sourceFile}:${e.lineNumber})`));"""


@pytest.fixture()
def csp_violations(page: Page) -> list[str]:
    """Every Content-Security-Policy violation in the test's page, as it navigates: the `securitypolicyviolation`
    events of each document and the console messages Chromium logs for them."""
    seen: list[str] = []
    page.expose_function("cspViolation", lambda text: seen.append(str(text)))
    page.add_init_script(WATCH_CSP)
    page.on("console", lambda message: seen.append(message.text) if CSP_REPORT in message.text else None)
    return seen


@pytest.fixture()
def no_csp_violations(csp_violations: list[str]) -> Iterator[list[str]]:
    """`csp_violations`, the test failing if there is any at its end: the page and the docs run under their
    policy (service/headers.py) without anything of theirs being blocked."""
    yield csp_violations
    assert csp_violations == [], f"blocked by the Content-Security-Policy: {csp_violations}"
