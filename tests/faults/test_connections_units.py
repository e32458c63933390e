"""In-process checks of the fixes the connection faults led to (the fault tests themselves run processes)."""

from __future__ import annotations

import gevent

from kite import Kite
from kite.transport import wsclient
from kite.transport.session import BACKLOG_CLOSE_CODE, SendBacklogExceeded
from kite.transport.sockjs.dialsessions import SESSION_LOST, XhrClientSession
from kite.wire import dnode
from tests.kontrol.conftest import wait_until
from tests.serving import serve_kite

#: A send-queue cap small against the kernel's socket buffers, and replies that overflow it.
SMALL_BACKLOG = 256 * 1024
REPLY_SIZE = 128 * 1024
UNREAD_CALLS = 200


def test_a_peer_that_never_reads_is_closed_at_the_send_queue_cap():
    k = Kite("blobs", "1.0.0")
    k.config.ip, k.config.disable_authentication = "127.0.0.1", True
    k.config.max_send_backlog = SMALL_BACKLOG
    k.handle_func("blob", lambda r: "x" * r.args.one().must_int())
    ended = []
    k.on_disconnect(lambda c: ended.append((c._conn.session.close_code, c.stats()["send_backlog"])))
    serve_kite(k)
    ws = wsclient.connect(f"ws://127.0.0.1:{k.port}/kite/websocket", timeout=5)
    try:
        options = {"kite": k.identity_wire(), "authentication": None, "withArgs": [REPLY_SIZE],
                   "responseCallback": dnode.FUNCTION_PLACEHOLDER}
        ws.send_texts([dnode.encode_message("blob", [options], {str(i): [0, "responseCallback"]})
                       for i in range(UNREAD_CALLS)])  # and never read a reply
        wait_until(lambda: bool(ended), 10)
        assert ended == [(BACKLOG_CLOSE_CODE, 0)]
    finally:
        ws.abort()
        k.close()


def test_the_send_queue_cap_raises_and_closes():
    session = XhrClientSession("http://127.0.0.1:9/kite/1/abc", "", False, 1.0, {})
    session.max_backlog = 10
    session.send("12345")
    try:
        session.send("123456")
    except SendBacklogExceeded:
        pass
    else:
        raise AssertionError("the send over the cap was queued")
    assert session.closed and session.close_code == BACKLOG_CLOSE_CODE and session.backlog() == 0
    gevent.sleep(0)


def test_an_xhr_session_the_server_opened_again_is_over():
    """A second ``o``: the server reaped our session while we could not poll; what we awaited is lost."""
    session = XhrClientSession("http://127.0.0.1:9/kite/1/abc", "", False, 1.0, {})
    try:
        assert session._handle_frame('a["x"]') is False
        assert session._handle_frame("o") is True
        assert (session.close_code, session.close_reason) == SESSION_LOST
    finally:
        session.close()
