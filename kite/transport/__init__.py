"""Bytes over sockets, behind one seam: :class:`~kite.transport.session.Session`.

Websocket connections on gevent sockets (:mod:`.websocket`, dialed with
:mod:`.wsclient`), the SockJS server, its sessions and the Go-style dialer
(:mod:`.sockjs`), the end-of-turn flush (:mod:`.flush`), and the WSGI server
and gunicorn worker (:mod:`.wsgi`). Nothing here knows about kites: the runtime
above gets a ``Session`` and sends and receives text.
"""
