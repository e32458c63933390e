"""examples/browser in a real headless Chromium (Debian's ``chromium``, driven by playwright).

The example kite serves its page and kite.js's browser build; the page calls ``square`` and
``greet`` over SockJS, serves ``log``/``alert`` that ``greet`` calls back, and finds the kite
through a real Kontrol (kite key of the user ``browser`` for Kontrol, Kontrol's token for the
kite). Everything is asserted on the DOM, waiting with timeouts.

Skipped only when Chromium or the kite.js bundle is absent; ``make deps`` installs both.
Set ``KITE_BROWSER_SCREENSHOT=/tmp/browser_example.png`` to keep a screenshot of the page.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
import requests
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from examples.browser.server import DEFAULT_BUNDLE, BrowserDemo
from kite import Config, testutil
from kontrol import Kontrol
from tests.serving import running_kontrol

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
#: Longest wait for one DOM condition (a page load with its calls takes ~0.3 s).
DOM_TIMEOUT_MS = 10_000

HELLO = "Hello browser, this line comes from the Python kite"
WHOAMI = "whoami() answered: browser, authenticated by token"


def chromium_path() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        pytest.skip(f"Chromium is not installed ({CHROMIUM}): run `make deps` (Debian package chromium)")
    return path


@pytest.fixture(scope="module")
def kontrol() -> Iterator[Kontrol]:
    """A Kontrol of user koding on memory storage, serving on a free port of 127.0.0.1."""
    config = Config()
    config.username, config.ip, config.port = "koding", "127.0.0.1", 0
    k = Kontrol(config, "memory")
    with running_kontrol(k):
        yield k


@pytest.fixture(scope="module")
def demo(kontrol: Kontrol) -> Iterator[BrowserDemo]:
    """The example kite (user alice), serving on a free port and registered to ``kontrol``."""
    if not DEFAULT_BUNDLE.is_file():
        pytest.skip(f"kite.js's browser build is missing ({DEFAULT_BUNDLE}): run `make deps`")
    d = BrowserDemo(DEFAULT_BUNDLE, Config())
    d.use_kontrol(kontrol, "alice")
    d.kite.config.ip, d.kite.config.port = "127.0.0.1", 0
    with testutil.serve(d.kite):
        d.register()
        yield d


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, demo: BrowserDemo) -> Iterator[Page]:
    """A fresh page (not loaded yet); the page's console errors and exceptions fail the test."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(DOM_TIMEOUT_MS)
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console error: {message.text} ({message.location.get('url', '')})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    try:
        yield page
        assert not problems, problems
    finally:
        context.close()


def open_page(page: Page, demo: BrowserDemo) -> None:
    response = page.goto(f"http://{demo.kite.addr}/")
    assert response is not None and response.status == 200


def expect_first_calls(page: Page) -> None:
    """What the page shows once it connected and made its first calls."""
    expect(page.locator("#status")).to_have_text("connected")
    expect(page.locator("#square-result")).to_have_text("49")
    # greet's handler called the page's log and alert, and returned what they answered
    expect(page.locator("#log li")).to_have_text([HELLO])
    expect(page.locator("#alert")).to_have_text("browser-demo says hi to browser!")
    expect(page.locator("#greet-result")).to_have_text('log() returned “line 1 logged”, alert() returned “alert shown”')


def test_page_calls_the_kite_and_is_called_back(page: Page, demo: BrowserDemo):
    open_page(page, demo)
    expect_first_calls(page)

    page.fill("#number", "12")
    page.click("#square-form button")
    expect(page.locator("#square-result")).to_have_text("144")

    page.fill("#name", "tester")
    page.click("#greet-form button")
    expect(page.locator("#log li")).to_have_text([HELLO, "Hello tester, this line comes from the Python kite"])
    expect(page.locator("#alert")).to_have_text("browser-demo says hi to tester!")
    expect(page.locator("#greet-result")).to_have_text('log() returned “line 2 logged”, alert() returned “alert shown”')


def test_page_finds_a_kite_through_kontrol(page: Page, demo: BrowserDemo, kontrol: Kontrol):
    open_page(page, demo)
    expect(page.locator("#kontrol-url")).to_have_text(kontrol.kite.url)
    expect(page.locator("#kontrol-query")).to_have_text(
        f'{{"username":"alice","environment":"{demo.kite.config.environment}","name":"browser-demo"}}'
    )
    expect(page.locator("#kontrol-found")).to_have_text(f"1 kite(s); calling browser-demo at {demo.kite.url}")
    # whoami needs authentication: the token Kontrol issued names the page's user
    expect(page.locator("#kontrol-result")).to_have_text(WHOAMI)


def test_reload_reconnects(page: Page, demo: BrowserDemo):
    open_page(page, demo)
    expect_first_calls(page)
    expect(page.locator("#kontrol-result")).to_have_text(WHOAMI)

    page.reload()
    expect_first_calls(page)
    expect(page.locator("#kontrol-result")).to_have_text(WHOAMI)
    page.fill("#number", "-3")
    page.click("#square-form button")
    expect(page.locator("#square-result")).to_have_text("9")
    if screenshot := os.environ.get("KITE_BROWSER_SCREENSHOT"):
        page.screenshot(path=screenshot, full_page=True)


def test_missing_bundle_answers_503(tmp_path):
    d = BrowserDemo(tmp_path / "bundle.js", Config())
    d.kite.config.ip, d.kite.config.port = "127.0.0.1", 0
    with testutil.serve(d.kite):
        for path in ("/", "/kite.js"):
            response = requests.get(f"http://{d.kite.addr}{path}", timeout=5)
            assert response.status_code == 503
            assert response.headers["Content-Type"].startswith("text/plain")
            assert "make deps" in response.text and "npm install" in response.text
            assert str(tmp_path / "bundle.js") in response.text
        # the kite itself still serves
        assert requests.get(f"http://{d.kite.addr}/config.json", timeout=5).json() == {"kontrol": None}
