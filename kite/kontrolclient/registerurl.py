"""The URL a kite registers with Kontrol (Go's ``registerurl.go``, PROTOCOL.md §1.6)."""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import TYPE_CHECKING

from .errors import RegisterURLError

if TYPE_CHECKING:
    from kite.kite import Kite

#: Linux ``SIOCGIFADDR``: the IPv4 address of one interface (for :func:`local_ipv4`).
_SIOCGIFADDR = 0x8915


def local_ipv4() -> str:
    """The first non-loopback IPv4 address of this host's interfaces (Go's ``localIP``).

    Raises :class:`RegisterURLError` when there is none.
    """
    for name in _interface_names():
        ip = _interface_ipv4(name)
        if ip is not None and not ip.startswith("127."):
            return ip
    try:  # no SIOCGIFADDR (not Linux): what the host name resolves to
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        infos = []
    for info in infos:
        ip = str(info[4][0])
        if not ip.startswith("127."):
            return ip
    raise RegisterURLError("cannot find local IP address")


def _interface_names() -> list[str]:
    try:
        return [name for _index, name in sorted(socket.if_nameindex())]
    except (AttributeError, OSError):
        return []


def _interface_ipv4(name: str) -> str | None:
    try:
        import fcntl
    except ImportError:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None  # no IPv4 address on this interface
    return socket.inet_ntoa(packed[20:24])


def register_url(kite: Kite, local: bool = True) -> str:
    """``http(s)://<ip>:<port>/kite`` for registering ``kite`` (§1.6); see :meth:`kite.Kite.register_url`."""
    port = kite.port
    if not port:
        raise RegisterURLError("the kite has no port yet: set config.port or call register_url once it listens")
    if local:
        ip = local_ipv4()
    else:
        ip = kite.config.ip
        try:
            public = ipaddress.ip_address(ip).is_global
        except ValueError:
            public = False
        if not public:
            raise RegisterURLError(
                f"cannot tell this kite's public IP: config.ip ({ip!r}) is not a public IP address; "
                "set config.ip (KITE_IP) to it, or register an explicit URL"
            )
    host = f"[{ip}]" if ":" in ip else ip
    scheme = "https" if kite._ssl_context is not None else "http"
    return f"{scheme}://{host}:{port}/kite"
