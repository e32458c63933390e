"""A browser can also be a kite: a Python kite that serves a page on which kite.js calls it back and forth.

    python -m examples.browser.server            # then open the URL it prints

The kite ``browser-demo`` serves, next to its kite endpoint ``/kite``:

* ``/`` — the page (``static/index.html`` and ``static/page.js``);
* ``/kite.js`` — kite.js's own browser build (``dist/bundle.js`` of npm ``kite.js@1.0.13``,
  which defines ``window.Kite`` and ``window.Kontrol``), read from ``--bundle`` /
  ``$KITEJS_BUNDLE``, by default from the copy ``make deps`` installs for the interop tests;
  without it ``/`` answers 503 with instructions;
* ``/config.json`` — what the page needs for its Kontrol section: Kontrol's URL, the query,
  and a kite key Kontrol issued for the user ``browser`` (never a private key).

Its methods: ``square`` and ``greet`` (open to anyone; ``greet`` calls the page's own ``log``
and ``alert`` methods back with ``r.client.tell``), and ``whoami`` (authenticated: the page
calls it through Kontrol, with the token Kontrol issued to it).

Unless ``--no-kontrol`` is given, the process also runs a Kontrol (in memory, on a free port)
and registers ``browser-demo`` to it, so that the page can find it there.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import getpass  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from flask import Response, jsonify, send_file  # noqa: E402

from kite import Config, Kite, Request  # noqa: E402
from kontrol import Kontrol  # noqa: E402

log = logging.getLogger("examples.browser")

NAME, VERSION = "browser-demo", "1.0.0"
#: The user whose kite key the page gets, to ask Kontrol for kites (and tokens to call them).
BROWSER_USER = "browser"
#: Seconds a call back into the page may take.
CALLBACK_TIMEOUT = 5.0

STATIC = Path(__file__).resolve().parent / "static"
PROJECT = Path(__file__).resolve().parents[2]
#: Where ``make deps`` (``npm ci`` in tests/interop/kitejs) puts kite.js's browser build.
DEFAULT_BUNDLE = PROJECT / "tests" / "interop" / "kitejs" / "node_modules" / "kite.js" / "dist" / "bundle.js"
BUNDLE_ENV = "KITEJS_BUNDLE"

MISSING_BUNDLE = """\
kite.js's browser build is missing: {path}

This page loads kite.js from this kite (at /kite.js), which serves the file dist/bundle.js
of the npm package kite.js@1.0.13. Get it with either of

    make deps        # installs it in tests/interop/kitejs/node_modules (npm ci)
    npm install --prefix DIR kite.js@1.0.13

and, for the second, start the server with --bundle DIR/node_modules/kite.js/dist/bundle.js
(or {env}=that path).
"""


def square(r: Request) -> float:
    """``square(n)``: n²."""
    return r.args.one().must_float64() ** 2


def greet(r: Request) -> dict[str, Any]:
    """``greet(name)``: calls the page's ``log`` and ``alert`` back and returns what they answered."""
    name = r.args.one().must_string()
    logged = r.client.tell_with_timeout("log", CALLBACK_TIMEOUT, f"Hello {name}, this line comes from the Python kite")
    alerted = r.client.tell_with_timeout("alert", CALLBACK_TIMEOUT, f"{r.local_kite.name} says hi to {name}!")
    log.info("greeted %s: log() answered %r, alert() answered %r", name, logged, alerted)
    return {"log": logged, "alert": alerted}


def whoami(r: Request) -> dict[str, str]:
    """``whoami()`` (authenticated): who the caller is, and how it proved it."""
    return {"username": r.username, "auth": r.auth.type if r.auth else ""}


class BrowserDemo:
    """The ``browser-demo`` kite (:attr:`kite`) and the page it serves."""

    def __init__(self, bundle: str | Path | None = None, config: Config | None = None):
        self.bundle = Path(bundle or os.environ.get(BUNDLE_ENV) or DEFAULT_BUNDLE)
        #: The page's Kontrol section (see :meth:`use_kontrol`); ``None`` leaves it off.
        self.kontrol_section: dict[str, Any] | None = None
        self.kite = k = Kite(NAME, VERSION, config)
        k.handle_func("square", square).disable_authentication()
        k.handle_func("greet", greet).disable_authentication()
        k.handle_func("whoami", whoami)
        k.handle_http("/", self.index)
        k.handle_http("/page.js", lambda: send_file(STATIC / "page.js", mimetype="text/javascript"))
        k.handle_http("/kite.js", self.kitejs)
        k.handle_http("/config.json", self.page_config)

    def use_kontrol(self, kontrol: Kontrol, username: str) -> None:
        """Make this kite a kite of ``username`` holding a kite key from ``kontrol`` (call
        :meth:`register` once it serves), and give the page Kontrol's URL and a kite key of
        :data:`BROWSER_USER`, so that it can find this kite there."""
        c = self.kite.config
        c.username = username
        c.kite_key = kontrol.register_user(username)
        c.kontrol_url, c.kontrol_user = kontrol.kite.url, kontrol.username
        c.kontrol_key = kontrol.keypairs.current().public
        self.kontrol_section = {
            "url": kontrol.kite.url,
            "auth": {"type": "kiteKey", "key": kontrol.register_user(BROWSER_USER)},
            "query": {"username": username, "environment": c.environment, "name": NAME},
            "method": "whoami",
        }

    def register(self) -> None:
        """Register this kite (serving) to the Kontrol of :meth:`use_kontrol`, and keep it registered."""
        self.kite.register_forever(self.kite.url)

    # -- the page ---------------------------------------------------------------------------

    def _missing_bundle(self) -> Response | None:
        if self.bundle.is_file():
            return None
        return Response(MISSING_BUNDLE.format(path=self.bundle, env=BUNDLE_ENV), 503, mimetype="text/plain")

    def index(self) -> Response:
        return self._missing_bundle() or send_file(STATIC / "index.html", mimetype="text/html")

    def kitejs(self) -> Response:
        return self._missing_bundle() or send_file(self.bundle, mimetype="text/javascript")

    def page_config(self) -> Response:
        response = jsonify({"kontrol": self.kontrol_section})
        response.headers["Cache-Control"] = "no-store"
        return response


def start_kontrol(ip: str, username: str) -> Kontrol:
    """A Kontrol of ``username`` on memory storage, serving on a free port of ``ip``."""
    config = Config()
    config.username, config.ip, config.port = username, ip, 0
    kontrol = Kontrol(config, "memory")
    gevent.spawn(kontrol.run)
    kontrol.kite.server_ready_notify().wait()
    log.info("Kontrol serves on %s", kontrol.kite.url)
    return kontrol


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ip", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: a free port")
    parser.add_argument("--bundle", help=f"kite.js's dist/bundle.js [${BUNDLE_ENV}; default {DEFAULT_BUNDLE}]")
    parser.add_argument("--no-kontrol", action="store_true", help="no Kontrol: the page's second section stays off")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    demo = BrowserDemo(args.bundle)
    if not demo.bundle.is_file():
        log.warning("kite.js's browser build is missing (%s): the page will answer 503; run `make deps`", demo.bundle)
    kontrol = None if args.no_kontrol else start_kontrol(args.ip, getpass.getuser())
    if kontrol is not None:
        demo.use_kontrol(kontrol, getpass.getuser())
    k = demo.kite
    k.config.ip, k.config.port = args.ip, args.port
    server = gevent.spawn(k.run)
    k.server_ready_notify().wait()
    if kontrol is not None:
        demo.register()

    def stop() -> None:
        k.close()
        if kontrol is not None:
            kontrol.close()

    gevent.signal_handler(signal.SIGTERM, stop)
    gevent.signal_handler(signal.SIGINT, stop)
    print(f"open http://{k.addr}/ in a browser", flush=True)
    server.join()


if __name__ == "__main__":
    main()
