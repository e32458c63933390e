"""The dashboard's Flask blueprint: the page, login/logout, JSON snapshots and the event stream.

Every route but the login page and the static files needs a session cookie (:mod:`.login`): the
page redirects to the login page without one, the API and the stream answer 401. The only
state-changing routes are ``POST login`` and ``POST logout``; the cookie is ``SameSite=Strict`` and a
POST from another origin is refused, so no other site can log a browser in or out.

The stream (``GET events?q=FILTER``, ``text/event-stream``) sends ``snapshot`` (the matching rows and
the key pairs), then ``add``/``update``/``remove`` per change and ``keypairs`` when they change,
with a comment line every :data:`STREAM_HEARTBEAT` seconds so that proxies keep it open and a gone
browser is noticed. It ends when the session expires (``expired``), when Kontrol closes, or when
the browser falls too far behind (the browser then reconnects for a fresh snapshot).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import gevent
from flask import Blueprint, Response, g, jsonify, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from ..storage import InvalidQueryError, KontrolQuery
from .feed import MAX_STREAMS, Feed, TooManyStreams, parse_filter
from .login import SESSION_COOKIE, SESSION_TTL, Gate, LoginRefused, Session

if TYPE_CHECKING:
    from ..kontrol import Kontrol

log = logging.getLogger("kontrol.dashboard")

#: Where Kontrol mounts the dashboard.
URL_PREFIX = "/dashboard"
#: Seconds between keep-alive comments on an idle event stream.
STREAM_HEARTBEAT = 15.0
#: Milliseconds a browser waits before reconnecting a broken stream (the ``retry:`` field).
STREAM_RETRY_MS = 2000
#: Seconds a refused login waits before answering: slows down guessing, costs one greenlet.
LOGIN_FAILURE_DELAY = 0.5
#: Largest login form read, bytes: a kite key is ~1.5 KB.
MAX_LOGIN_BODY = 64 * 1024
#: Routes served without a session (logging out only clears the cookie).
PUBLIC_ENDPOINTS = frozenset({"login", "login_form", "logout", "static"})
#: Headers of every dashboard answer: nothing but the dashboard's own files may load or frame it.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # not no-referrer: then the login form's POST says "Origin: null"
}


def sse(name: str, data: Any) -> str:
    """One server-sent event (the JSON has no newlines, so it is one ``data:`` line)."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _refused(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def _same_origin() -> bool:
    """A POST came from the dashboard's own pages: the browser's ``Sec-Fetch-Site`` and ``Origin`` say
    so, or the client sent neither (not a browser, so no cross-site forgery)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.netloc == request.host and parts.scheme == request.scheme


def dashboard_blueprint(kontrol: Kontrol, feed: Feed, gate: Gate) -> Blueprint:
    """The dashboard of ``kontrol`` as a blueprint (mount it under :data:`URL_PREFIX`); ``feed`` must be
    started (:meth:`Feed.start`) for the rows to follow the registry."""
    bp = Blueprint("kontrol_dashboard", __name__, static_folder="static", template_folder="templates")

    @bp.before_request
    def require_session() -> BaseResponse | None:
        endpoint = (request.endpoint or "").rpartition(".")[2]
        if endpoint in PUBLIC_ENDPOINTS:
            return None
        session = gate.session_of(request.cookies.get(SESSION_COOKIE))
        if session is None:
            if endpoint == "index":
                return redirect(url_for(".login_form"), HTTPStatus.FOUND)
            return _refused(HTTPStatus.UNAUTHORIZED, "log in first")
        g.dashboard_session = session
        return None

    @bp.after_request
    def harden(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        if (request.endpoint or "").rpartition(".")[2] != "static":
            response.headers["Cache-Control"] = "no-store"
        return response

    # -- logging in and out -------------------------------------------------------------------

    def login_page(error: str = "", status: int = HTTPStatus.OK) -> Response:
        html = render_template("dashboard_login.html", error=error, kontrol=kontrol.kite.kite(),
                               passwords=bool(gate.password_file))
        return Response(html, status=status, mimetype="text/html")

    @bp.get("/login")
    def login_form() -> Response:
        return login_page()

    @bp.post("/login")
    def login() -> BaseResponse:
        if not _same_origin():
            return _refused(HTTPStatus.FORBIDDEN, "cross-origin login refused")
        request.max_content_length = MAX_LOGIN_BODY  # more is answered 413, never read
        form = request.form
        try:
            if form.get("kite_key", "").strip():
                session = gate.login_with_kite_key(form["kite_key"])
            elif form.get("username"):
                session = gate.login_with_password(form["username"], form.get("password", ""))
            else:
                raise LoginRefused("paste a kite key" + (", or give a user and password" if gate.password_file else ""))
        except LoginRefused as exc:
            log.warning("dashboard login from %s refused: %s", request.remote_addr, exc)
            gevent.sleep(LOGIN_FAILURE_DELAY)
            return login_page(str(exc), HTTPStatus.UNAUTHORIZED)
        try:
            cookie = gate.cookie_for(session)
        except LoginRefused as exc:
            return login_page(str(exc), HTTPStatus.SERVICE_UNAVAILABLE)
        log.info("dashboard login: %s (%s) from %s", session.username, session.method, request.remote_addr)
        response = redirect(url_for(".index"), HTTPStatus.SEE_OTHER)
        response.set_cookie(SESSION_COOKIE, cookie, max_age=SESSION_TTL, path=url_for(".index"),
                            secure=request.is_secure, httponly=True, samesite="Strict")
        return response

    @bp.post("/logout")
    def logout() -> BaseResponse:
        if not _same_origin():
            return _refused(HTTPStatus.FORBIDDEN, "cross-origin logout refused")
        response = redirect(url_for(".login_form"), HTTPStatus.SEE_OTHER)
        response.delete_cookie(SESSION_COOKIE, path=url_for(".index"), secure=request.is_secure, httponly=True,
                               samesite="Strict")
        return response

    # -- the page and its data ----------------------------------------------------------------

    @bp.get("/")
    def index() -> Response:
        html = render_template("dashboard_page.html", session=g.dashboard_session, kontrol=kontrol.kite.kite())
        return Response(html, mimetype="text/html")

    @bp.get("/api/session")
    def session_info() -> Response:
        session: Session = g.dashboard_session
        return jsonify({"username": session.username, "method": session.method, "expiresAt": session.expires_at})

    @bp.get("/api/kites")
    def kites() -> Response:
        try:
            query = parse_filter(request.args.get("q", ""))
        except InvalidQueryError as exc:
            return _refused(HTTPStatus.BAD_REQUEST, str(exc))
        return jsonify({"kites": feed.rows(query), "now": time.time()})

    @bp.get("/api/keypairs")
    def key_pairs() -> Response:
        return jsonify({"keyPairs": feed.key_pairs()})

    @bp.get("/events")
    def events() -> Response:
        session: Session = g.dashboard_session
        try:
            query = parse_filter(request.args.get("q", ""))
        except InvalidQueryError as exc:
            # A stream, not a 400: EventSource cannot read an error body. The page stops on "invalid".
            body = f"retry: {STREAM_RETRY_MS}\n\n" + sse("invalid", {"error": str(exc)})
            return Response(body, mimetype="text/event-stream")
        if feed.stream_count >= MAX_STREAMS:
            return _refused(HTTPStatus.SERVICE_UNAVAILABLE, f"{MAX_STREAMS} dashboard streams are open")
        response = Response(_stream(feed, query, session.expires_at), mimetype="text/event-stream")
        response.headers["X-Accel-Buffering"] = "no"  # nginx: pass events on at once
        return response

    return bp


def _stream(feed: Feed, query: KontrolQuery | None, expires_at: float) -> Iterator[str]:
    """The body of one event stream, run by its WSGI greenlet. It subscribes when the server starts
    sending it (a HEAD request never does) and unsubscribes however it ends (a write to a gone browser
    fails at the next event or heartbeat, which closes this generator)."""
    try:
        stream, rows = feed.subscribe(query)
    except TooManyStreams:
        return  # lost the race for the last place: the browser retries after STREAM_RETRY_MS
    try:
        snapshot = {"kites": rows, "keyPairs": feed.key_pairs(), "now": time.time()}
        yield f"retry: {STREAM_RETRY_MS}\n\n" + sse("snapshot", snapshot)
        while True:
            left = expires_at - time.time()
            if left <= 0:
                yield sse("expired", {"error": "session expired"})
                return
            item = stream.next(min(STREAM_HEARTBEAT, left))
            if item is None:
                yield ": keep-alive\n\n"
                continue
            name, data = item
            if name == "end":
                return
            yield sse(name, data)
    finally:
        feed.unsubscribe(stream)
