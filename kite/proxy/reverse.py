"""The reverse proxy kite (PROTOCOL.md §8.4): public URLs for kites that cannot be reached directly.

::

    python -m kite.proxy.reverse --region eu [--port 3999] [--public-host proxy.example.com]
                                 [--public-port 443] [--cert cert.pem --key key.pem]

Who dials whom::

    backend kite ──(1) dials, register(["http://10.0.4.17:6000/kite"])──▶ proxy (:3999/kite)
                 ◀── "https://proxy.example.com:443/proxy/<kite id>" ──
    backend kite ──(2) register(<that URL>)──▶ Kontrol
    caller ──(3) getKites──▶ Kontrol ──▶ [<that URL>, token]
    caller ──(4) dials https://proxy.example.com:443/proxy/<kite id>/…──▶ proxy
    proxy ──(5) dials ws://10.0.4.17:6000/kite/… (or http:// for XHR)──▶ backend kite

:class:`ReverseProxy` is a kite named ``proxy`` (0.0.1): ``/kite`` is its own SockJS
endpoint, where its one method ``register`` lives; ``/proxy/<kite id>/<rest>`` is
forwarded (:mod:`kite.proxy.forward`). An entry lasts as long as the backend's connection
to the proxy, and a backend that stops answering ``kite.ping`` on it is forgotten (its
relays closed with 1014). Kite ids are bound to the user who registered them
(:mod:`kite.proxy.registry`). The proxy registers itself with Kontrol as
``<scheme>://<public host>:<public port>/kite``, only once it listens.

The public URLs use ``http``/``https`` (a SockJS base URL, what kites and kite.js dial),
where Go's binary wrote ``ws``/``wss``, which the 2016 Go client cannot dial (§1.4).
"""

from __future__ import annotations

if __name__ == "__main__":  # a server entry point: patch before anything loads requests
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterable  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

from kite.config import Config  # noqa: E402
from kite.errors import ArgumentError  # noqa: E402
from kite.request import Request  # noqa: E402

from .base import ProxyKite, add_common_flags, check_common_flags, proxy_config, run_command  # noqa: E402
from .forward import PROXY_PREFIX, Forwarder  # noqa: E402
from .httpforward import HttpForwarder  # noqa: E402
from .relay import IDLE_TIMEOUT, Relays  # noqa: E402

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse

NAME = "proxy"
VERSION = "0.0.1"
#: The Go binary's defaults.
DEFAULT_PORT = 3999
DEFAULT_PUBLIC_HOST = "127.0.0.1"
DEFAULT_ENVIRONMENT = "development"


class ReverseProxy(ProxyKite):
    """The reverse proxy kite; see the module docstring.

    ``public_host``/``public_port`` make the URLs handed out (``public_port`` ``None``:
    the port it listens on). ``idle_timeout``: seconds a proxied WebSocket may carry
    nothing before it is closed. Serve it with :meth:`run`; ``register_self`` (default
    ``True``) registers it with ``config.kontrol_url`` once it listens.
    """

    def __init__(self, config: Config | None = None, *, public_host: str = DEFAULT_PUBLIC_HOST,
                 public_port: int | None = None, idle_timeout: float = IDLE_TIMEOUT):
        super().__init__(NAME, VERSION, config)
        self.public_host = public_host
        self.public_port = public_port
        self.relays = Relays(idle_timeout)
        self.http = HttpForwarder()
        self.forwarder = Forwarder(self.registry, self.relays, self.http,
                                   max_message_size=self.config.max_message_size)
        #: Asked by the server's :class:`~kite.proxy.forward.ForwardingHandler` before a WebSocket upgrade.
        self.upgrade_gate = self.forwarder

    # -- URLs ----------------------------------------------------------------------------

    @property
    def public_base(self) -> str:
        """``<scheme>://<public host>:<public port>``."""
        host = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        return f"{self.http_scheme}://{host}:{self.public_port or self.port}"

    def public_url(self, kite_id: str) -> str:
        """The URL handed out to the kite ``kite_id``: ``<public base>/proxy/<kite id>``."""
        return f"{self.public_base}{PROXY_PREFIX}/{kite_id}"

    @property
    def self_url(self) -> str:
        """The URL the proxy registers with Kontrol: ``<public base>/kite``."""
        return f"{self.public_base}/kite"

    def _backend_url(self, r: Request) -> str:
        """``register`` ``withArgs [kiteURL]``: the URL to forward to."""
        url = r.args.one().must_string()
        if not url:
            raise ArgumentError("register: expected [kiteURL], the URL this proxy forwards to")
        return url

    # -- serving -------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """WSGI: ``/proxy/…`` is forwarded, the rest is the kite's own (``/kite``)."""
        if environ.get("PATH_INFO", "").startswith(PROXY_PREFIX + "/"):
            return self.forwarder(environ, start_response)
        return super().__call__(environ, start_response)

    def close(self) -> None:
        """Close the relays, stop serving and registering, and close the backend connections."""
        self.relays.close()
        super().close()
        self.http.close()


# -- the command ------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m kite.proxy.reverse", description=__doc__.split("\n\n")[0])
    add_common_flags(ap, DEFAULT_PORT)
    ap.add_argument("--public-host", default=DEFAULT_PUBLIC_HOST,
                    help=f"host in the URLs handed out; must match the certificate (default {DEFAULT_PUBLIC_HOST})")
    ap.add_argument("--public-port", type=int, default=None, help="port in the URLs handed out (default: --port)")
    ap.add_argument("--region", required=True, help="the proxy kite's region")
    ap.add_argument("--env", default=DEFAULT_ENVIRONMENT, help=f"the proxy kite's environment ({DEFAULT_ENVIRONMENT})")
    ap.add_argument("--version", action="version", version=VERSION, help="print the version and exit")
    args = ap.parse_args(argv)
    check_common_flags(ap, args)
    return args


def build(args: argparse.Namespace) -> ReverseProxy:
    """The proxy of the options, its config from kite.key (required) and ``KITE_*``."""
    config = proxy_config(args)
    config.region, config.environment = args.region, args.env
    return ReverseProxy(config, public_host=args.public_host, public_port=args.public_port or args.port,
                        idle_timeout=args.idle_timeout)


def main(argv: list[str] | None = None) -> int:
    """``python -m kite.proxy.reverse``: 0 after SIGTERM/SIGINT, 1 when it cannot start."""
    args = parse_args(argv)
    return run_command(NAME, args, lambda: build(args))


if __name__ == "__main__":
    sys.exit(main())
