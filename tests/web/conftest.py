"""Browser tests of web/: pytest-playwright driving Debian's Chromium (never a downloaded browser).

Every page is opened through ``open_page``, which checks in teardown that the browser asked
nothing of any host but 127.0.0.1 (no CDN, no fonts: the page works offline) and that no
script error was thrown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
LOCAL_PREFIXES = ("http://127.0.0.1:", "https://127.0.0.1:", "blob:http://127.0.0.1:", "data:")

expect.set_options(timeout=30_000)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    """pytest-playwright's launch options, pointed at the system Chromium that `.ci/run` installs."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), as .ci/run does")
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


@dataclass
class WatchedPage:
    page: Page
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """``open_page(url, **context_options)``: a page in a fresh browser context (a fresh person:
    own localStorage), loaded and with its model list in place."""
    contexts, watched = [], []

    def open_(url: str, **context_options) -> Page:
        context = browser.new_context(**context_options)
        contexts.append(context)
        page = context.new_page()
        record = WatchedPage(page)
        watched.append(record)
        context.on("request", lambda request: record.requests.append(request.url))
        page.on("pageerror", lambda error: record.errors.append(str(error)))
        page.goto(url)
        expect(page.get_by_label("Model", exact=True)).to_be_enabled()
        return page

    yield open_
    for context in contexts:
        context.close()
    for record in watched:
        outside = sorted({url for url in record.requests if not url.startswith(LOCAL_PREFIXES)})
        assert not outside, f"the page contacted hosts other than 127.0.0.1: {outside}"
        assert not record.errors, f"script errors on the page: {record.errors}"
