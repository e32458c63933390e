"""Kontrol's dashboard (kontrol.dashboard): every route refused without a login, logins with kite
keys and a password file, the event stream following kites as they come and go -- over HTTP against
a real Kontrol on 127.0.0.1 -- and the page itself in a real headless Chromium.

Set ``KITE_DASHBOARD_SCREENSHOT=1`` to rewrite ``docs/dashboard.png`` (the README's screenshot)
from the browser test; normal runs leave it alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
import requests
from gevent.queue import Empty, Queue

from kite import Config, Kite
from kontrol import Kontrol
from kontrol.dashboard import blueprint, check_password, feed, hash_password
from kontrol.dashboard.feed import parse_filter
from kontrol.dashboard.login import SESSION_COOKIE
from kontrol.storage import InvalidQueryError, KontrolQuery, open_storage
from tests.serving import running_kontrol

from .conftest import FAST, EtcdServer, make_kite, start_kontrol, wait_until

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "dashboard.png"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
#: Seconds a registration or a disconnect may take to show in the stream or the page (the issue's bound).
LIVE_WITHIN = 1.0
#: Longest wait for one DOM condition, milliseconds.
DOM_TIMEOUT_MS = 5_000
PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused logins answer at once, and idle streams send their keep-alive often (which is how a
    stream notices that its browser left), so that the tests need not wait."""
    monkeypatch.setattr(blueprint, "LOGIN_FAILURE_DELAY", 0.0)
    monkeypatch.setattr(blueprint, "STREAM_HEARTBEAT", 0.2)
    monkeypatch.setattr(feed, "KEYPAIR_SYNC_INTERVAL", 0.5)


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("dashboard") / "passwords"
    path.write_text(f"# dashboard users\nops:{hash_password(PASSWORD)}\n")
    return str(path)


@pytest.fixture(scope="module")
def kontrol(password_file: str) -> Iterator[Kontrol]:
    """A Kontrol of user koding on memory storage with the dashboard, serving on 127.0.0.1."""
    config = Config()
    config.username, config.ip, config.port = "koding", "127.0.0.1", 0
    k = Kontrol(config, "memory", dashboard=True, dashboard_password_file=password_file, **FAST)
    with running_kontrol(k):
        yield k


def base(kontrol: Kontrol) -> str:
    return f"http://{kontrol.kite.addr}/dashboard"


def login(kontrol: Kontrol, **form: str) -> requests.Response:
    return requests.post(f"{base(kontrol)}/login", data=form, allow_redirects=False, timeout=5)


def logged_in(kontrol: Kontrol, username: str = "alice") -> requests.Session:
    """An HTTP session holding the dashboard cookie of ``username`` (via a kite key from ``kontrol``)."""
    response = login(kontrol, kite_key=kontrol.register_user(username))
    assert response.status_code == 303, response.text
    session = requests.Session()
    session.cookies.set(SESSION_COOKIE, response.cookies[SESSION_COOKIE], domain=kontrol.kite.config.ip)
    return session


def serve_kite_for(kontrol: Kontrol, username: str, name: str = "math", version: str = "1.0.0") -> Kite:
    k = make_kite(kontrol, username, name, serve=False)
    k.version = version
    k.config.timeout = 5
    gevent.spawn(k.run)
    assert k.server_ready_notify().wait(5)
    return k


# -- refused without a login ------------------------------------------------------------------------

PROTECTED = ["/", "/api/session", "/api/kites", "/api/keypairs", "/events", "/events?q=/alice"]


@pytest.mark.parametrize("cookie", [None, "forged", "eyJ1IjoiYWxpY2UiLCJtIjoia2l0ZUtleSJ9.ZzZzZw.bad"])
def test_every_route_but_login_is_refused_without_a_session(kontrol, cookie):
    jar = {SESSION_COOKIE: cookie} if cookie else {}
    for path in PROTECTED:
        response = requests.get(base(kontrol) + path, cookies=jar, allow_redirects=False, timeout=5)
        if path == "/":
            assert response.status_code == 302 and response.headers["Location"].endswith("/dashboard/login")
        else:
            assert response.status_code == 401, path
            assert response.json() == {"error": "log in first"}
        assert "koding" not in response.text and "math" not in response.text
    head = requests.head(f"{base(kontrol)}/events", cookies=jar, timeout=5)
    assert head.status_code == 401
    logout = requests.post(f"{base(kontrol)}/logout", cookies=jar, allow_redirects=False, timeout=5)
    assert logout.status_code == 303 and logout.headers["Location"].endswith("/dashboard/login")  # clears only
    for path in ("/login", "/static/dashboard.css", "/static/dashboard.js", "/static/login.js"):
        assert requests.get(base(kontrol) + path, timeout=5).status_code == 200, path


def test_login_with_a_kite_key_of_this_kontrol(kontrol):
    response = login(kontrol, kite_key=kontrol.register_user("alice"))
    assert response.status_code == 303 and response.headers["Location"] == "/dashboard/"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard/" in cookie
    assert "Max-Age=28800" in cookie
    session = requests.Session()
    session.cookies.set(SESSION_COOKIE, response.cookies[SESSION_COOKIE], domain="127.0.0.1")
    assert session.get(f"{base(kontrol)}/api/session", timeout=5).json()["username"] == "alice"
    page = session.get(f"{base(kontrol)}/", timeout=5)
    assert page.status_code == 200 and 'id="kites"' in page.text and "default-src 'none'" in \
        page.headers["Content-Security-Policy"]
    pairs = session.get(f"{base(kontrol)}/api/keypairs", timeout=5)
    assert [p["id"] for p in pairs.json()["keyPairs"]] == [kontrol.keypairs.current().id]
    assert "PRIVATE" not in pairs.text and "private" not in pairs.text
    out = session.post(f"{base(kontrol)}/logout", allow_redirects=False, timeout=5)
    assert out.status_code == 303 and "Max-Age=0" in out.headers["Set-Cookie"]


def _signed(kontrol: Kontrol, **claims) -> str:
    pair = kontrol.keypairs.current()
    base_claims = {"iss": kontrol.username, "sub": "mallory", "iat": int(time.time()), "jti": str(uuid.uuid4()),
                   "kontrolURL": kontrol.kontrol_url, "kontrolKey": pair.public}
    return kontrol.keypairs.sign({**base_claims, **claims}, pair)


def test_kite_keys_not_from_this_kontrol_are_refused(kontrol):
    stranger = Kontrol(Config(), "memory")  # same user name, its own key pair
    stranger.kite.config.username = "koding"
    try:
        refused = {
            "another Kontrol's": stranger.register_user("alice"),
            "expired": _signed(kontrol, exp=int(time.time()) - 3600),
            "wrong issuer": _signed(kontrol, iss="someone-else"),
            "garbage": "not.a.jwt",
            "tampered": kontrol.register_user("alice")[:-4] + "AAAA",
        }
        for what, key in refused.items():
            response = login(kontrol, kite_key=key)
            assert response.status_code == 401, what
            assert SESSION_COOKIE not in response.cookies, what
            assert "kite key refused" in response.text, what
    finally:
        stranger.storage.close()


def test_an_oversized_login_is_not_read(kontrol):
    response = login(kontrol, kite_key="x" * (1024 * 1024))
    assert response.status_code == 413 and SESSION_COOKIE not in response.cookies


def test_login_with_the_password_file(kontrol):
    ok = login(kontrol, username="ops", password=PASSWORD)
    assert ok.status_code == 303 and SESSION_COOKIE in ok.cookies
    for user, password in (("ops", "wrong"), ("nobody", PASSWORD), ("ops", "")):
        bad = login(kontrol, username=user, password=password)
        assert bad.status_code == 401 and SESSION_COOKIE not in bad.cookies
        assert "wrong user or password" in bad.text


def test_cross_origin_login_is_refused(kontrol):
    response = requests.post(f"{base(kontrol)}/login", data={"kite_key": kontrol.register_user("alice")},
                             headers={"Origin": "http://evil.example"}, allow_redirects=False, timeout=5)
    assert response.status_code == 403 and SESSION_COOKIE not in response.cookies


def test_password_hashes():
    stored = hash_password("s3cret")
    assert stored.startswith("scrypt$") and stored != hash_password("s3cret")  # salted
    assert check_password(stored, "s3cret") and not check_password(stored, "s3cret!")
    assert not check_password("scrypt$1$8$1$AAAA$AAAA", "x") and not check_password("md5$abc", "x")


def test_hash_password_command_prints_a_password_file_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kontrol", "--dashboard-hash-password", "ops"], cwd=ROOT,
                          input="hunter2\n", capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KITE_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    user, _, stored = done.stdout.strip().partition(":")
    assert user == "ops" and check_password(stored, "hunter2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kontrol_command_serves_the_dashboard(tmp_path, password_file):
    port = _free_port()
    env = {**os.environ, "KITE_HOME": str(tmp_path), "KONTROL_IP": "127.0.0.1", "KONTROL_PORT": str(port),
           "KONTROL_STORAGE": "memory", "KONTROL_DASHBOARD_PASSWORD_FILE": password_file}
    missing = subprocess.run([sys.executable, "-m", "kontrol", "--dashboard", "--dashboard-password-file",
                              str(tmp_path / "nope")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "--dashboard-password-file" in missing.stderr
    proc = subprocess.Popen([sys.executable, "-m", "kontrol", "--dashboard"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/dashboard"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert requests.get(f"{url}/login", timeout=2).status_code == 200
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
                time.sleep(0.1)
        assert requests.get(f"{url}/api/kites", timeout=5).status_code == 401
        ok = requests.post(f"{url}/login", data={"username": "ops", "password": PASSWORD}, allow_redirects=False,
                           timeout=5)
        assert ok.status_code == 303
        kites = requests.get(f"{url}/api/kites", cookies=ok.cookies, timeout=5).json()["kites"]
        assert [k["name"] for k in kites] == ["kontrol"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert f"dashboard at http://127.0.0.1:{port}/dashboard/" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_filter_parsing_follows_the_query_rules():
    assert parse_filter("") is None and parse_filter(" / ") is None
    assert parse_filter("/alice/prod") == KontrolQuery(username="alice", environment="prod")
    assert parse_filter("alice/prod/math/>= 1.0/") == KontrolQuery(username="alice", environment="prod",
                                                                   name="math", version=">= 1.0")
    for bad in ("/alice//math", "/alice/prod/math/not a version", "/a/b/c/d/e/f/g/h"):
        with pytest.raises(InvalidQueryError):
            parse_filter(bad)


# -- the event stream --------------------------------------------------------------------------------


class EventReader:
    """Server-sent events of one stream, read by a greenlet into a queue of ``(name, data)``."""

    def __init__(self, session: requests.Session, url: str):
        self.response = session.get(url, stream=True, timeout=10)
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["Content-Type"].startswith("text/event-stream")
        self.events: Queue = Queue()
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        name = ""
        for line in self.response.iter_lines(chunk_size=1, decode_unicode=True):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                self.events.put((name, json.loads(line[len("data: "):])))

    def next(self, name: str, timeout: float = LIVE_WITHIN) -> dict:
        """The next event called ``name`` (others before it are skipped) within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got, data = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except Empty:
                pytest.fail(f"no {name!r} event within {timeout} s")
            if got == name:
                return data

    def close(self) -> None:
        self._reader.kill()
        self.response.close()


def test_stream_sends_the_snapshot_then_adds_and_removes(kontrol):
    session = logged_in(kontrol)
    everything = EventReader(session, f"{base(kontrol)}/events")
    only_bob = EventReader(session, f"{base(kontrol)}/events?q=/bob")
    try:
        snapshot = everything.next("snapshot")
        assert [(k["name"], k["kind"]) for k in snapshot["kites"]] == [("kontrol", "self")]
        assert snapshot["keyPairs"][0]["current"] is True
        assert only_bob.next("snapshot")["kites"] == []

        math = serve_kite_for(kontrol, "alice")
        math.register(math.url)
        added = everything.next("add")
        assert (added["id"], added["username"], added["url"], added["kind"]) == (math.id, "alice", math.url,
                                                                                 "websocket")
        assert abs(added["registeredAt"] - time.time()) < 5 and abs(added["lastSeen"] - time.time()) < 5

        bob = serve_kite_for(kontrol, "bob", "cli")
        bob.register_http(bob.url)
        assert everything.next("add")["kind"] == "http"
        bobs = only_bob.next("add")  # alice's kite never reached the filtered stream
        assert bobs["id"] == bob.id and bobs["kind"] == "http"

        math.close()
        assert everything.next("remove") == {"id": math.id}
        bob.close()  # HTTP: it goes when its heartbeats stop and the TTL runs out
        assert only_bob.next("remove", timeout=15) == {"id": bob.id}

        assert session.head(f"{base(kontrol)}/events", timeout=5).status_code == 200
        assert kontrol.dashboard.feed.stream_count == 2  # a HEAD request never subscribes

        listing = session.get(f"{base(kontrol)}/api/kites", params={"q": "/alice"}, timeout=5).json()
        assert listing["kites"] == []
        assert session.get(f"{base(kontrol)}/api/kites", params={"q": "/alice//x"}, timeout=5).status_code == 400
    finally:
        everything.close()
        only_bob.close()
    wait_until(lambda: kontrol.dashboard.feed.stream_count == 0, timeout=5)  # both streams cleaned up


def test_streams_are_capped(kontrol, monkeypatch):
    monkeypatch.setattr(blueprint, "MAX_STREAMS", 1)
    monkeypatch.setattr(feed, "MAX_STREAMS", 1)
    session = logged_in(kontrol)
    wait_until(lambda: kontrol.dashboard.feed.stream_count == 0, timeout=5)
    first = EventReader(session, f"{base(kontrol)}/events")
    try:
        first.next("snapshot")
        refused = session.get(f"{base(kontrol)}/events", timeout=5)
        assert refused.status_code == 503 and "streams are open" in refused.json()["error"]
    finally:
        first.close()


def test_stream_with_an_invalid_filter_says_so(kontrol):
    reader = EventReader(logged_in(kontrol), f"{base(kontrol)}/events?q=/alice//math")
    try:
        assert "Query option is not set" in reader.next("invalid")["error"]
    finally:
        reader.close()


def test_kites_of_another_kontrol_on_the_same_storage_appear(etcd_server: EtcdServer):
    """Two Kontrols on one etcd (as ``--workers`` are): a kite registering with the other one shows
    up in this one's stream, and goes again; how it registered is the other Kontrol's to know."""
    location = f"etcd://127.0.0.1:{etcd_server.client_port}/t-{uuid.uuid4().hex[:12]}"
    there = start_kontrol(open_storage(location))
    early = serve_kite_for(there, "alice", "early")  # registered before this Kontrol started
    early.register(early.url)
    here = start_kontrol(open_storage(location), dashboard=True)
    reader = None
    try:
        reader = EventReader(logged_in(here), f"{base(here)}/events?q=/alice")
        snapshot = reader.next("snapshot", timeout=5)["kites"]
        # listed from etcd's replica once it is in sync (at the latest one sync later, as an "add")
        first = snapshot[0] if snapshot else reader.next("add", timeout=5)
        assert (first["id"], first["kind"]) == (early.id, "")
        math = serve_kite_for(there, "alice")
        math.register(math.url)
        added = reader.next("add", timeout=5)
        assert (added["id"], added["url"], added["kind"], added["lastSeen"]) == (math.id, math.url, "", None)
        math.close()
        assert reader.next("remove", timeout=5) == {"id": math.id}
    finally:
        if reader is not None:
            reader.close()
        early.close()
        there.close()
        here.close()


# -- the page in a real browser ----------------------------------------------------------------------


def chromium_path() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        pytest.skip(f"Chromium is not installed ({CHROMIUM}): run `make deps` (Debian package chromium)")
    return path


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def test_page_follows_kites_live_in_chromium(kontrol):
    from playwright.sync_api import expect, sync_playwright

    executable = chromium_path()
    kites: list[Kite] = []
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.set_default_timeout(DOM_TIMEOUT_MS)
            page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

            page.goto(f"{base(kontrol)}/")  # not logged in: sent to the login page
            expect(page).to_have_url(f"{base(kontrol)}/login")
            page.fill("#kite_key", "not a kite key")
            page.click("#key-form button")
            expect(page.locator("#login-error")).to_contain_text("kite key refused")
            problems.clear()  # the refused login's 401 is the one expected console error
            page.fill("#kite_key", kontrol.register_user("alice"))
            page.click("#key-form button")
            expect(page.locator("#status")).to_have_text("live")
            expect(page.locator("#user")).to_have_text("alice")
            expect(page.locator("#keypairs tbody tr")).to_have_count(1)

            math = serve_kite_for(kontrol, "alice")
            kites.append(math)
            math.register(math.url)
            row = page.locator(f'tr.kite[data-id="{math.id}"]')
            expect(row).to_be_visible(timeout=LIVE_WITHIN * 1000)
            expect(row.locator("td.kind")).to_have_text("websocket")
            expect(page.locator('tbody[data-group="/alice/prod/math/1.0.0"] .count')).to_have_text("1")

            math.close()
            expect(row).to_have_count(0, timeout=LIVE_WITHIN * 1000)

            for username, name, version in (("alice", "math", "1.0.0"), ("alice", "math", "1.0.0"),
                                            ("alice", "storage", "2.1.0"), ("bob", "web", "0.3.1")):
                k = serve_kite_for(kontrol, username, name, version)
                kites.append(k)
                k.register(k.url)
            bob = serve_kite_for(kontrol, "bob", "billing", "1.4.0")
            kites.append(bob)
            bob.register_http(bob.url)
            expect(page.locator("tr.kite")).to_have_count(6)  # five kites and Kontrol itself
            expect(page.locator('tbody[data-group="/alice/prod/math/1.0.0"] .count')).to_have_text("2")

            page.fill("#filter", "/bob")
            expect(page.locator("tr.kite")).to_have_count(2)
            expect(page.locator(f'tr.kite[data-id="{bob.id}"] td.kind')).to_have_text("HTTP")
            page.fill("#filter", "/alice/prod/storage")
            expect(page.locator("tr.kite")).to_have_count(1)
            page.fill("#filter", "/alice//storage")
            expect(page.locator("#filter-error")).to_contain_text("Query option is not set")
            page.fill("#filter", "")
            expect(page.locator("tr.kite")).to_have_count(6)
            expect(page.locator("#count")).to_have_text("6 kites in 5 groups of 3 users")

            old = kontrol.keypairs.current().id  # a rotation shows in the key-pair panel
            new = kontrol.keypairs.rotate().id
            kontrol.keypairs.retire(old)
            expect(page.locator("#keypairs tbody tr")).to_have_count(2)
            expect(page.locator(f'#keypairs tr.active[data-id="{new}"] td.state')).to_have_text("active · signs")
            expect(page.locator(f'#keypairs tr.retired[data-id="{old}"] td.state')).to_contain_text("retired")
            if os.environ.get("KITE_DASHBOARD_SCREENSHOT"):
                page.wait_for_timeout(2500)  # let "registered" read a few seconds ago
                page.screenshot(path=str(SCREENSHOT), full_page=True)

            page.set_viewport_size({"width": 390, "height": 844})  # a phone: rows become cards
            expect(page.locator(f'tr.kite[data-id="{bob.id}"]')).to_be_visible()
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the page scrolls sideways on a phone ({width} px)"
            page.screenshot(path=str(Path(os.environ.get("TMPDIR", "/tmp")) / "dashboard-phone.png"))
            context.close()
        finally:
            browser.close()
            for k in kites:
                k.close()
    assert not problems, problems
