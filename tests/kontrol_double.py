"""A Kontrol test double: a real Python kite named ``kontrol`` on 127.0.0.1.

It speaks the Kontrol side of PROTOCOL.md §7 just enough to test the kite side
(kite/kontrolclient/) over real sockets, and records everything it sees:

* ``register`` (kiteKey only): records the kite, answers ``{"url", "heartbeatInterval": 0}``
  (plus ``kiteKey``/``publicKey`` when :attr:`KontrolDouble.rotate` is set) and, without
  waiting, calls ``kite.heartbeat`` back on the caller's connection with
  ``[heartbeat_interval, ping]``, counting the pings per kite id;
* ``getKites``: matches its records (every non-empty query field must be equal, as
  Kontrol's postgres backend), with tokens from :mod:`kite.testutil` for the requester;
  keeps any ``watchCallback`` so tests can :meth:`~KontrolDouble.push` events;
* ``getToken`` (exactly one match), ``getKey`` (kiteKey only), ``cancelWatcher``;
* ``POST /register`` and ``GET /heartbeat`` with §7.7's statuses and bodies.

Tokens and keys are signed by the test Kontrol pair of :mod:`kite.testkeys`; the
double also trusts kite keys from :func:`kite.testkeys.other_key_pair` (a rotated pair).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import gevent
from flask import Response, request

from kite import GenericError, KiteError, KiteIdentity, testkeys, testutil
from kite.auth import KITE_KEY

#: ``keyId`` the double reports for every kite (any UUID does).
KEY_ID = "2b0d7e55-93c4-4f08-a1d6-7c5e9b3f2a10"
#: Seconds the double waits for a kite's answer to ``kite.heartbeat`` (Kontrol's 4 s).
HEARTBEAT_CALL_TIMEOUT = 4


def audience(query: dict[str, str]) -> str:
    """The token audience Kontrol derives from a query (§5.5)."""
    username, environment, name = (query.get(k, "") for k in ("username", "environment", "name"))
    if name:
        return f"/{username}/{environment}/{name}"
    if environment:
        return f"/{username}/{environment}"
    if username:
        return f"/{username}"
    return "/"


def _http_error(status: int, message: str) -> Response:
    return Response(json.dumps({"err": message}) + "\n", status=status, mimetype="text/plain")


class KontrolDouble:
    """Serve with ``with KontrolDouble(port=...) as kontrol:``; ``kontrol.url`` is its ``/kite`` URL."""

    def __init__(self, port: int = 0, heartbeat_interval: int = 1, http_heartbeat_interval: int = 1):
        self.heartbeat_interval = heartbeat_interval
        self.http_heartbeat_interval = http_heartbeat_interval
        #: kite id -> {"kite": identity, "url": url, "via": "websocket"|"http"}
        self.registrations: dict[str, dict[str, Any]] = {}
        #: Every call received: (method, raw options object).
        self.calls: list[tuple[str, Any]] = []
        #: ``kite.heartbeat`` pings received, by kite id.
        self.pings: Counter[str] = Counter()
        #: Outcomes of the ``kite.heartbeat`` calls: ("ok", result) or ("error", KiteError).
        self.heartbeat_replies: list[tuple[str, Any]] = []
        #: ``(kite_key, public_key)`` to hand out in register results (a key rotation), or None.
        self.rotate: tuple[str, str] | None = None
        #: The PEM ``getKey`` returns.
        self.key_pem = testkeys.public_pem()
        #: ``getToken`` arguments received: (query without "force", force).
        self.token_queries: list[tuple[dict, Any]] = []
        #: ``watchCallback`` functions received, the id to report, and cancelled ids.
        self.watch_callbacks: list[Any] = []
        self.watcher_id = ""
        self.cancelled_watchers: list[Any] = []
        #: HTTP registrations received: {"method", "content_type", "body"}.
        self.http_registers: list[dict[str, Any]] = []
        #: Refuse this many coming ``POST /register`` with 500.
        self.http_failures = 0
        #: ``GET /heartbeat`` received, by id.
        self.http_heartbeats: Counter[str] = Counter()

        k = testutil.new_kite("kontrol", "0.0.1", username=testutil.KONTROL_USER, port=port)
        k.config.kite_key_any_user = True  # Kontrol serves every user
        trusted = {testkeys.public_pem().strip(), testkeys.other_key_pair().public_pem.strip()}

        def verify(pem: str) -> None:
            if pem.strip() not in trusted:
                raise KiteError("kontrol key is not trusted")

        k.config.verify_func = verify
        k.handle_func("register", self._register)
        k.handle_func("getKites", self._get_kites)
        k.handle_func("getToken", self._get_token)
        k.handle_func("getKey", self._get_key)
        k.handle_func("cancelWatcher", self._cancel_watcher)
        k.handle_http("/register", self._http_register, methods=["POST"])
        k.handle_http("/heartbeat", self._http_heartbeat, methods=["GET"])
        handle_call = k._handle_call

        def recording(client, method_name, arguments):
            self.calls.append((method_name, arguments[0] if arguments else None))
            handle_call(client, method_name, arguments)

        k._handle_call = recording  # see the raw options of every call
        self.kite = k
        self._greenlet: gevent.Greenlet | None = None

    # -- lifetime -------------------------------------------------------------

    def start(self) -> KontrolDouble:
        self._greenlet = gevent.spawn(self.kite.run)
        if not self.kite.server_ready_notify().wait(5):
            raise RuntimeError("the Kontrol double did not start")
        return self

    def stop(self) -> None:
        self.kite.close()
        if self._greenlet is not None:
            self._greenlet.join(timeout=5)

    def __enter__(self) -> KontrolDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.kite.port}/kite"

    # -- test controls ------------------------------------------------------------

    def add_kite(self, identity: dict[str, str], url: str) -> None:
        """Record a kite as registered (without it dialing in)."""
        self.registrations[identity["id"]] = {"kite": dict(identity), "url": url, "via": "websocket"}

    def forget(self, kite_id: str) -> None:
        """Forget a kite, as Kontrol does after a restart or 30 s without heartbeats."""
        self.registrations.pop(kite_id, None)

    def push(self, event: dict[str, Any]) -> None:
        """Send a KiteEvent to every watcher: ``watchCallback({"error": null, "result": event})``."""
        for callback in self.watch_callbacks:
            callback({"error": None, "result": event})

    def calls_of(self, method: str) -> list[Any]:
        return [options for name, options in self.calls if name == method]

    # -- kite methods ---------------------------------------------------------------

    @staticmethod
    def _require_kite_key(r) -> None:
        if r.auth is None or r.auth.type != KITE_KEY:
            raise GenericError(f"Unexpected authentication type: {r.auth.type if r.auth else ''}")

    def _register(self, r) -> dict[str, Any]:
        self._require_kite_key(r)
        url = r.args.one().must_map().get("url")
        if not url:
            raise GenericError("empty url")
        identity = KiteIdentity.from_wire(r.client.kite.to_wire())
        identity.username = r.username
        try:
            identity.validate()
        except ValueError as exc:
            raise GenericError(str(exc)) from None
        self.registrations[identity.id] = {"kite": identity.to_wire(), "url": url, "via": "websocket"}
        gevent.spawn(self._drive_heartbeat, r.client, identity.id)  # without waiting, as Kontrol
        result: dict[str, Any] = {"url": url, "heartbeatInterval": 0}
        if self.rotate is not None:
            result["kiteKey"], result["publicKey"] = self.rotate
        return result

    def _drive_heartbeat(self, client, kite_id: str) -> None:
        def ping(*_args: Any) -> None:
            self.pings[kite_id] += 1

        try:
            reply = client.tell_with_timeout("kite.heartbeat", HEARTBEAT_CALL_TIMEOUT, self.heartbeat_interval, ping)
            self.heartbeat_replies.append(("ok", reply))
        except KiteError as exc:
            self.heartbeat_replies.append(("error", exc))

    def _matches(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            reg
            for reg in self.registrations.values()
            if all(not value or reg["kite"].get(key) == value for key, value in query.items())
        ]

    def _get_kites(self, r) -> dict[str, Any]:
        args = r.args.one().must_map()
        query = args.get("query") or {}
        token = testutil.new_token(r.username, audience(query))
        kites = [
            {"kite": reg["kite"], "url": reg["url"], "keyId": KEY_ID, "token": token} for reg in self._matches(query)
        ]
        result: dict[str, Any] = {"kites": kites}
        callback = args.get("watchCallback")
        if callable(callback):
            self.watch_callbacks.append(callback)
            if self.watcher_id:
                result["watcherID"] = self.watcher_id
        return result

    def _get_token(self, r) -> str:
        query = dict(r.args.one().must_map())
        force = query.pop("force", None)
        self.token_queries.append((query, force))
        matches = self._matches(query)
        if not matches:
            raise GenericError("no kites found")
        if len(matches) > 1:
            raise GenericError("query matches more than one kite")
        return testutil.new_token(r.username, audience(query))

    def _get_key(self, r) -> str:
        self._require_kite_key(r)
        return self.key_pem

    def _cancel_watcher(self, r) -> None:
        self.cancelled_watchers.append(r.args.one().raw)

    # -- HTTP ---------------------------------------------------------------------------

    def _http_register(self) -> Response:
        raw = request.get_data(as_text=True)
        self.http_registers.append({"method": request.method, "content_type": request.content_type, "body": raw})
        try:
            body = json.loads(raw)
        except ValueError:
            return _http_error(400, f"wrong register input: '{raw}'")
        if self.http_failures > 0:
            self.http_failures -= 1
            return _http_error(500, "internal error - register")
        auth = body.get("auth") or {}
        if auth.get("type") != KITE_KEY:
            return _http_error(400, f"Unexpected authentication type: {auth.get('type')}")
        url = body.get("url")
        if not url:
            return _http_error(400, "empty URL")
        try:
            username = self.kite.authenticate_simple_kite_key(auth.get("key", ""))
        except KiteError as exc:
            return _http_error(401, exc.message)
        identity = KiteIdentity.from_wire(body.get("kite"))
        identity.username = username
        try:
            identity.validate()
        except ValueError as exc:
            return _http_error(400, str(exc))
        self.registrations[identity.id] = {"kite": identity.to_wire(), "url": url, "via": "http"}
        answer = {"url": url, "heartbeatInterval": self.http_heartbeat_interval}
        return Response(json.dumps(answer) + "\n", status=200, mimetype="application/json")

    def _http_heartbeat(self) -> Response:
        kite_id = request.args.get("id", "")
        if not kite_id:
            return Response("query id is empty", status=400, mimetype="text/plain")
        self.http_heartbeats[kite_id] += 1
        known = self.registrations.get(kite_id, {}).get("via") == "http"
        return Response("pong" if known else "registeragain", status=200, mimetype="text/plain")
