"""SockJS, the transport Go kites and kite.js speak (PROTOCOL.md §1): the server
(:mod:`.server`), its sessions (:mod:`.sessions`) and the dialer (:mod:`.client`).
The frames themselves are pure code in :mod:`kite.wire.sockjs`."""
