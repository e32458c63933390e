"""Kontrol's HTTP endpoints for kites that register without a websocket (PROTOCOL.md §7.7).

``POST /register`` with ``{"url", "kite", "auth"}`` and ``GET /heartbeat?id=``,
as a Flask blueprint: Kontrol mounts it on its own app, and any Flask app can
mount it next to a Kontrol it owns.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from flask import Blueprint, Response, request

from kite import KiteError
from kite.wire.protocol import KiteIdentity

from .handlers import resolve_key_pair, validate_url
from .registry import HTTP
from .storage import InvalidKiteError, StorageError

if TYPE_CHECKING:
    from .kontrol import Kontrol

log = logging.getLogger("kontrol.http")

#: Largest /register body read, bytes: a registration is well under 8 KiB.
MAX_REGISTER_BODY = 64 * 1024


def _error(status: int, message: str) -> Response:
    # The Go Kontrol answers errors as text/plain {"err": "..."} plus a newline.
    return Response(json.dumps({"err": message}) + "\n", status=status, mimetype="text/plain")


def blueprint(kontrol: Kontrol) -> Blueprint:
    """The ``/register`` and ``/heartbeat`` routes of ``kontrol``."""
    bp = Blueprint("kontrol_http", __name__)

    @bp.route("/register", methods=["POST"])
    def register() -> Response:
        raw = request.get_data(cache=False)[:MAX_REGISTER_BODY]
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            return _error(400, f"wrong register input: '{raw[:200].decode('utf-8', 'replace')}'")
        auth = body.get("auth") if isinstance(body.get("auth"), dict) else {}
        if auth.get("type") != "kiteKey":
            return _error(400, f"Unexpected authentication type: {auth.get('type', '')}")
        try:
            url = validate_url(body.get("url"))
        except KiteError:
            return _error(400, "empty URL")
        key = str(auth.get("key", ""))
        try:
            username = kontrol.kite.verifier.verify_kite_key(key)
        except KiteError as exc:
            return _error(401, exc.message)
        try:
            pair, extra = resolve_key_pair(kontrol, key)
        except KiteError as exc:
            return _error(400, exc.message)
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
        return Response(json.dumps(result) + "\n", status=200, mimetype="application/json")

    @bp.route("/heartbeat", methods=["GET"])
    def heartbeat() -> Response:
        kite_id = request.args.get("id", "")
        if not kite_id:
            return _error(400, "query id is empty")
        body = "pong" if kontrol.registry.seen(kite_id) else "registeragain"
        return Response(body, status=200, mimetype="text/plain")

    return bp
