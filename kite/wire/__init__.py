"""The wire protocol as pure code: text or bytes in, values or events out.

Nothing in this package touches a socket, a greenlet or a clock (an import
contract in the test suite keeps it so): dnode messages (:mod:`.dnode`), SockJS
frames (:mod:`.sockjs`), RFC 6455 websocket frames (:mod:`.wsframes`) and the
client's opening handshake (:mod:`.wshandshake`), JWS decoding and RS256
checks (:mod:`.jws`), the kite protocol's shapes (:mod:`.protocol`) and the
JSON codec (:mod:`.jsoncodec`). Malformed input parses or raises
:class:`~kite.errors.ProtocolError`; nothing else escapes.
"""
