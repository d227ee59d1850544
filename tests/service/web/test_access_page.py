"""The page under CAVSYNC_API_ACCESS=all (issue 28, item 5): it loads without the key, asks for it once (a
dialog), keeps it as the HttpOnly session cookie POST /session sets, and then lists the catalog, shows posters
(<img>, no headers), deletes and plays media (<video>); a wrong key is said so and asked again, and so is a
session that is gone."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from ..conftest import API_KEY, Corpus, make_config
from .conftest import Server


@pytest.fixture(scope="module")
def locked_server(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = Path(shutil.copytree(corpus.data, tmp_path_factory.mktemp("locked") / "data"))
    from service.app import create_app

    server = Server(create_app(make_config(corpus, data, api_key=API_KEY, api_access="all"))).start()
    yield server
    server.stop()


def test_the_page_asks_for_the_key_once_then_everything_loads(
    page: Page, outside_requests: list[str], no_csp_violations: list[str], locked_server: Server
) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(30_000)
    assert httpx.get(f"{locked_server.url}/videos", timeout=10).status_code == 401  # locked indeed
    page.goto(f"{locked_server.url}/ui/?view=catalog")
    dialog = page.locator("dialog#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#catalog-rows tr")).to_have_count(0)
    dialog.get_by_label("API key").fill("not-the-key")
    dialog.get_by_role("button", name="Unlock").click()
    expect(dialog.locator("#key-error")).to_contain_text("wrong API key")
    dialog.get_by_label("API key").fill(API_KEY)
    dialog.get_by_role("button", name="Unlock").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#catalog-rows tr")).to_have_count(20)
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["cavsync_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and API_KEY not in session["value"]
    assert page.evaluate("document.cookie") == ""  # the page's scripts never see it
    page.locator("#catalog-rows tr[data-id='3']").get_by_role("button").click()
    poster = page.locator("#video-detail img")
    expect(poster).to_have_js_property("complete", True)
    assert poster.evaluate("img => img.naturalWidth") == 320  # an <img> with the cookie, no header
    page.locator("#video-detail").get_by_role("button", name="Delete…").click()  # a write: the cookie, same origin
    page.locator("dialog#confirm").get_by_role("button", name="Delete").click()
    expect(page.locator("#catalog-rows tr[data-id='3'] .status")).to_have_text("deleted")
    page.goto(f"{locked_server.url}/ui/?view=search&mode=sound&source=video&video=4&k=3")
    expect(page.locator("#result-list .card")).to_have_count(3)  # the cookie outlives the page: not asked again
    expect(dialog).to_be_hidden()
    card = page.locator("#result-list .card").first
    card.get_by_role("button", name="▶ Play the moment").click()
    player = card.locator("video")
    page.wait_for_function("el => el.readyState >= 2", arg=player.element_handle(), timeout=30_000)  # media loaded
    assert card.locator(".card-error").is_hidden()
    page.context.clear_cookies()  # the session gone (expired, the key changed): the next call asks again
    page.goto(f"{locked_server.url}/ui/?view=jobs")
    expect(dialog).to_be_visible()
    dialog.get_by_label("API key").fill(API_KEY)
    dialog.get_by_role("button", name="Unlock").click()
    expect(page.locator("#media-roots")).to_contain_text(re.compile(r"/"))
    assert errors == [], errors
