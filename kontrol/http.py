"""Kontrol's HTTP endpoints for kites that register without a websocket (PROTOCOL.md §7.7).

``POST /register`` with ``{"url", "kite", "auth"}`` and ``GET /heartbeat?id=``,
as a Flask blueprint: any Flask app can mount it next to a Kontrol it owns. Kontrol's
own server answers the same two routes as plain WSGI applications (:func:`wsgi_routes`),
the same answers without Flask's cost per request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from flask import Blueprint, Response, request

from kite import KiteError
from kite.wire.protocol import KiteIdentity

from .handlers import resolve_key_pair, validate_url
from .registry import HTTP
from .storage import InvalidKiteError, StorageError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication

    from .kontrol import Kontrol

log = logging.getLogger("kontrol.http")

#: Largest /register body read, bytes: a registration is well under 8 KiB.
MAX_REGISTER_BODY = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, whichever way it is served."""

    status: int
    body: str
    mimetype: str = "text/plain"

    @property
    def content_type(self) -> str:
        """The header Flask would send: text types get ``; charset=utf-8``."""
        return f"{self.mimetype}; charset=utf-8" if self.mimetype.startswith("text/") else self.mimetype


def _error(status: int, message: str) -> Answer:
    # The Go Kontrol answers errors as text/plain {"err": "..."} plus a newline.
    return Answer(status, json.dumps({"err": message}) + "\n")


def register_answer(kontrol: Kontrol, raw: bytes) -> Answer:
    """``POST /register`` with body ``raw``: register the kite, or say why not."""
    raw = raw[:MAX_REGISTER_BODY]
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("not an object")
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
        return _error(400, f"wrong register input: '{raw[:200].decode('utf-8', 'replace')}'")
    auth = body.get("auth") if isinstance(body.get("auth"), dict) else {}
    if auth.get("type") != "kiteKey":
        return _error(400, f"Unexpected authentication type: {auth.get('type', '')}")
    try:
        url = validate_url(body.get("url"))
    except KiteError:
        return _error(400, "empty URL")
    key = auth.get("key")
    key = key if isinstance(key, str) else ""  # str() of a hostile nested value could blow the stack
    try:
        username = kontrol.kite.verifier.verify_kite_key(key)
    except KiteError as exc:
        return _error(401, exc.message)
    except StorageError as exc:  # deciding whether to trust the key's Kontrol key needed the storage
        log.error("HTTP register: key pair lookup: %s", exc)
        return _error(500, "internal error - register")
    try:
        pair, extra = resolve_key_pair(kontrol, key)
    except KiteError as exc:
        return _error(400, exc.message)
    except StorageError as exc:
        log.error("HTTP register %s: key pair lookup: %s", username, exc)
        return _error(500, "internal error - register")
    kite = KiteIdentity.from_wire(body.get("kite"))
    kite.username = username
    try:
        kite.validate()
        kontrol.registry.register(kite, url, pair.id, HTTP)
    except (ValueError, InvalidKiteError) as exc:
        return _error(400, str(exc))
    except StorageError as exc:
        log.error("HTTP register %s: %s", kite, exc)
        return _error(500, "internal error - register")
    result = {"url": url, "heartbeatInterval": int(kontrol.registry.heartbeat_interval), **extra}
    return Answer(200, json.dumps(result) + "\n", "application/json")


def heartbeat_answer(kontrol: Kontrol, kite_id: str) -> Answer:
    """``GET /heartbeat?id=<kite_id>``: ``pong``, or ``registeragain`` for a kite Kontrol does not have."""
    if not kite_id:
        return _error(400, "query id is empty")
    return Answer(200, "pong" if kontrol.registry.seen(kite_id) else "registeragain")


def _flask(answer: Answer) -> Response:
    return Response(answer.body, status=answer.status, mimetype=answer.mimetype)


def blueprint(kontrol: Kontrol) -> Blueprint:
    """The ``/register`` and ``/heartbeat`` routes of ``kontrol``, for any Flask app."""
    bp = Blueprint("kontrol_http", __name__)

    @bp.route("/register", methods=["POST"])
    def register() -> Response:
        # More than the cap is refused: never read it all (whatever server the app runs under).
        return _flask(register_answer(kontrol, request.stream.read(MAX_REGISTER_BODY + 1)))

    @bp.route("/heartbeat", methods=["GET"])
    def heartbeat() -> Response:
        return _flask(heartbeat_answer(kontrol, request.args.get("id", "")))

    return bp


def wsgi_routes(kontrol: Kontrol) -> dict[str, WSGIApplication]:
    """The same two routes as plain WSGI applications, for Kontrol's own server: a heartbeat
    through Flask costs ~120 µs of CPU, this way a few. Other methods go on to Kontrol's Flask
    app (which answers 405 as the blueprint would)."""
    fallback = kontrol.kite.app

    def serve(answer: Answer, start_response: StartResponse) -> list[bytes]:
        body = answer.body.encode()
        start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}",
                       [("Content-Type", answer.content_type), ("Content-Length", str(len(body)))])
        return [body]

    def register(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            return fallback(environ, start_response)
        body = environ["wsgi.input"].read(MAX_REGISTER_BODY + 1)  # more is refused: never read it all
        return serve(register_answer(kontrol, body), start_response)

    def heartbeat(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return fallback(environ, start_response)
        kite_id = parse_qs(environ.get("QUERY_STRING", "")).get("id", [""])[0]
        return serve(heartbeat_answer(kontrol, kite_id), start_response)

    return {"/register": register, "/heartbeat": heartbeat}
