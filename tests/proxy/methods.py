"""The methods of the backend kites behind the proxy (in-process and ``backend_kite.py`` alike; no pytest here)."""

from __future__ import annotations

from gevent.event import AsyncResult

from kite import GenericError, Kite, Request

#: Seconds a backend handler waits for its caller (a callback, a call back).
CALLER_TIMEOUT = 5.0


def _fail(r: Request) -> None:
    raise GenericError("boom")


def _callback(r: Request) -> str:
    """``callback(fn)``: calls ``fn("hello")``, then returns ``"done"`` (kite.js' server.js contract)."""
    r.args.one().must_function()("hello")
    return "done"


def _pingpong(r: Request) -> str:
    """``pingpong(fn)``: calls ``fn("ping", answer)`` and returns what the caller passes to ``answer``:
    a callback each way."""
    answered: AsyncResult[str] = AsyncResult()
    r.args.one().must_function()("ping", answered.set)
    return answered.get(timeout=CALLER_TIMEOUT)


def _ask(r: Request) -> float:
    """``ask(n)``: calls the caller's ``answer(n)`` back and returns twice its result."""
    n = r.args.one().must_float64()
    return 2 * r.client.tell_with_timeout("answer", CALLER_TIMEOUT, n)


def _blob(r: Request) -> str:
    return "x" * r.args.one().must_int()


def add_methods(k: Kite) -> Kite:
    """``square``, ``fail``, ``callback``, ``pingpong``, ``ask``, ``blob`` and ``whoami``; returns ``k``."""
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    k.handle_func("fail", _fail)
    k.handle_func("callback", _callback)
    k.handle_func("pingpong", _pingpong)
    k.handle_func("ask", _ask)
    k.handle_func("blob", _blob)
    k.handle_func("whoami", lambda r: k.id)
    return k
