"""Proxy kites that give public URLs to kites behind a proxy or a NAT (PROTOCOL.md §8.3–8.5).

The reverse proxy (``python -m kite.proxy.reverse``) forwards ``/proxy/<kite id>/…`` to a
backend kite that registered with it; the kite side (``register_to_proxy``) lives with the
other Kontrol helpers in :mod:`kite.kontrolclient`.
"""
