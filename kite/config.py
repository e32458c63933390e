"""Kite configuration (Go's ``config.Config``), with the original's defaults (PROTOCOL.md §9).

Where a value comes from, later sources winning:

1. the defaults below (Go's ``config.New()``);
2. kite.key (:meth:`Config.read_kite_key`): ``sub`` → ``username``, ``iss`` →
   ``kontrol_user``, ``jti`` → ``id``, ``kontrolURL``, ``kontrolKey`` and the raw key;
3. ``KITE_*`` environment variables (:meth:`Config.read_environment_variables`).

:meth:`Config.get` does all three (Go's ``config.Get``); ``Kite(name, version)``
does the same but tolerates a missing kite.key.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .connection import DEFAULT_MAX_CONCURRENT_CALLS
from .transport.session import MAX_SEND_BACKLOG

#: Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat`` of kite keys
#: and tokens. The Go kite allows none, but a 2016 Kontrol stamps ``iat`` with
#: its own "now", so a callee whose clock is a second behind would refuse
#: brand-new tokens. Five seconds covers NTP-synchronised hosts and stays far
#: below the 30 s renewal margin of the token renewer (§5.6).
DEFAULT_AUTH_LEEWAY = 5.0

#: Seconds :meth:`kite.Kite.shutdown` (SIGTERM on ``run()``) lets calls in flight finish before it
#: closes the sessions anyway: enough for ordinary calls, and well inside the 30 s a Kubernetes pod
#: (``terminationGracePeriodSeconds``) or gunicorn (``--graceful-timeout``) gives by default.
DEFAULT_DRAIN_TIMEOUT = 10.0

#: ``KITE_*`` variables read into a Config, by field (PROTOCOL.md §9). Others are
#: read where they are used: ``KITE_HOME`` (kite.key directory, :mod:`kite.kitekey`),
#: ``KITE_LOG_LEVEL`` (:mod:`kite.log`), ``KITE_VERSION`` (:meth:`kite.Kite.run`).
ENVIRONMENT_VARIABLES = {
    "KITE_USERNAME": "username",
    "KITE_ENVIRONMENT": "environment",
    "KITE_REGION": "region",
    "KITE_IP": "ip",
    "KITE_PORT": "port",
    "KITE_KONTROL_URL": "kontrol_url",
    "KITE_TRANSPORT": "transport",
    "KITE_VERIFY_TTL": "verify_ttl",
    "KITE_TIMEOUT": "timeout",
    "KITE_HANDSHAKE_TIMEOUT": "dial_timeout",
    "KITE_PROXY_URL": "proxy_url",
    "KITE_METRICS": "metrics",
    "KITE_LOG_FORMAT": "log_format",
    "KITE_DRAIN_TIMEOUT": "drain_timeout",
}

#: Go's duration units, in seconds (both micro signs are accepted, as in Go).
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names its source (e.g. the variable)."""


def parse_duration(text: str) -> float:
    """Seconds from Go's duration syntax (``90s``, ``1m30s``, ``1.5h``, ``300ms``, ``-5m``).

    A bare number is taken as seconds. Raises ``ValueError`` for anything else.
    """
    s = text.strip()
    try:
        seconds = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"invalid duration {text!r}")
        return seconds
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r} (use Go syntax like 90s, 1m30s or 1.5h)")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total

#: Transports a client can dial with.
TRANSPORTS = ("websocket", "xhr_polling", "xhr_streaming", "auto")

_TRANSPORT_ALIASES = {
    "websocket": "websocket",
    "xhrpolling": "xhr_polling",
    "xhr_polling": "xhr_polling",
    "xhr": "xhr_polling",
    "xhrstreaming": "xhr_streaming",
    "xhr_streaming": "xhr_streaming",
    "auto": "auto",
}


def normalize_transport(name: str) -> str:
    """Map Go's and our spellings (``WebSocket``, ``XHRPolling``, ``auto``, ...) to a transport name."""
    key = name.strip().lower().replace("-", "_")
    try:
        return _TRANSPORT_ALIASES[key]
    except KeyError:
        raise ValueError(f"unknown transport {name!r}; use one of {', '.join(TRANSPORTS)}") from None


@dataclass
class Config:
    """Everything a kite needs to know about itself and its surroundings."""

    username: str = "unknown"
    environment: str = "unknown"
    region: str = "unknown"
    #: The kite.key's ``jti``; not applied to the kite's id automatically (as in Go).
    id: str = ""
    kite_key: str = ""
    disable_authentication: bool = False
    #: Run a connection's incoming calls one at a time, in arrival order.
    disable_concurrency: bool = False
    transport: str = "websocket"
    ip: str = "0.0.0.0"
    port: int = 0
    kontrol_url: str = ""
    kontrol_key: str = ""
    kontrol_user: str = ""
    #: ``verify_func(pem)``: decides whether a kite key's ``kontrolKey`` is trusted;
    #: raise ``kite.KeyNotTrustedError`` or return ``False`` (cached refusals), or raise any
    #: other error to refuse. ``None``: trust only ``kontrol_key`` itself (byte-identical), as Go's selfVerify.
    verify_func: Callable[[str], bool | None] | None = None
    #: Seconds a kontrol-key trust decision is cached (0 = the default, 5 min;
    #: negative = not cached).
    verify_ttl: float = 0.0
    #: ``verify_audience_func(kite_identity, aud)``: replaces the token audience
    #: rule (§5.5); raise to refuse. ``None``: the default rule.
    verify_audience_func: Callable[..., None] | None = None
    #: Seconds for Kontrol calls and dials (2018's ``Config.Timeout``).
    timeout: float = 15.0
    #: Seconds bounding a client's dial; ``None`` waits as long as the OS does.
    dial_timeout: float | None = 15.0
    #: Cap on the reconnect back-off, seconds.
    reconnect_max_interval: float = 60.0
    #: Incoming calls one connection may run at once.
    max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS
    #: SockJS heartbeat (``h``) interval, seconds (Go kites use 10 s).
    heartbeat_interval: float = 10.0
    #: How long a polling session lives with no poll attached, seconds.
    disconnect_delay: float = 10.0
    #: Seconds a peer may send nothing at all (a silent peer is pinged) before its session is
    #: dropped as dead, on dialed sessions (the read timeout of XHR) and served WebSockets;
    #: ``None`` on the serving side: 3 heartbeat intervals. 0 turns the check off.
    dead_peer_timeout: float | None = None
    #: Characters a session may hold queued for a peer that does not read them before it is closed.
    max_send_backlog: int = MAX_SEND_BACKLOG
    #: Largest message accepted from a peer, bytes.
    max_message_size: int = 16 * 1024 * 1024
    #: Seconds an HTTP client has to send a request's head (slowloris guard;
    #: ``kite.transport.wsgi.HEADER_TIMEOUT``).
    header_timeout: float = 10.0
    #: Seconds an HTTP client has to send a request's body (``kite.transport.wsgi.BODY_TIMEOUT``).
    body_timeout: float = 60.0
    #: Seconds of clock skew tolerated on ``exp``/``nbf``/``iat`` of kite keys and tokens.
    auth_leeway: float = DEFAULT_AUTH_LEEWAY
    #: Accept a kiteKey of any user (Go's behaviour). ``False`` (strict, the
    #: default): a kite key must belong to this kite's ``username``, except for
    #: methods opened with ``Kite.allow_other_users(name)``.
    kite_key_any_user: bool = False
    #: ``KITE_PROXY_URL``: a reverse proxy to register through (§8.3).
    proxy_url: str = ""
    #: ``KITE_METRICS``: collect Prometheus metrics and serve ``/metrics`` (``Kite.enable_metrics``).
    metrics: bool = False
    #: ``KITE_LOG_FORMAT``: ``"plain"`` (the default) or ``"json"`` lines (``Kite.set_log_format``).
    log_format: str = "plain"
    #: ``KITE_DRAIN_TIMEOUT``: seconds ``Kite.shutdown()`` (and SIGTERM) waits for calls in flight.
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    #: ``Kite.run()`` drains on SIGTERM/SIGINT (a second one stops at once) when it blocks the main
    #: greenlet of the main thread; ``False`` leaves the signals to the program.
    handle_signals: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> Config:
        """A copy whose ``extra`` dict is copied too (functions are shared)."""
        c = copy.copy(self)
        c.extra = dict(self.extra)
        return c

    # -- sources ---------------------------------------------------------------

    @classmethod
    def get(cls, kite_key_required: bool = True) -> Config:
        """Defaults, then kite.key, then ``KITE_*`` variables (Go's ``config.Get``).

        With ``kite_key_required=False`` a missing kite.key is skipped (a present
        but invalid one still raises :class:`~kite.kitekey.KiteKeyError`).
        """
        from .kitekey import KiteKeyNotFoundError

        c = cls()
        try:
            c.read_kite_key()
        except KiteKeyNotFoundError:
            if kite_key_required:
                raise
        c.read_environment_variables()
        return c

    @classmethod
    def from_kite_key(cls, path: str) -> Config:
        """Defaults plus the kite key in ``path`` (Go's ``config.NewFromKiteKey``)."""
        c = cls()
        c.read_kite_key(path)
        return c

    def read_kite_key(self, path: str | None = None) -> Config:
        """Apply the kite key at ``path`` (default: ``$KITE_HOME/kite.key`` or
        ``~/.kite/kite.key``), after verifying it. Returns ``self``."""
        from .kitekey import parse

        self.apply_kite_key(parse(path=path).raw)
        return self

    def apply_kite_key(self, key: str) -> Config:
        """Apply a kite key given as text (self-verified first). Returns ``self``."""
        from .kitekey import parse

        parsed = parse(key)
        self.kite_key = parsed.raw
        if parsed.username:
            self.username = parsed.username
        if parsed.kontrol_user:
            self.kontrol_user = parsed.kontrol_user
        if parsed.id:
            self.id = parsed.id
        if parsed.kontrol_url:
            self.kontrol_url = parsed.kontrol_url
        if parsed.kontrol_key:
            self.kontrol_key = parsed.kontrol_key
        return self

    def read_environment_variables(self, environ: Mapping[str, str] | None = None) -> Config:
        """Apply the ``KITE_*`` variables of :data:`ENVIRONMENT_VARIABLES` that are set and non-empty.

        Durations use Go's syntax (``KITE_VERIFY_TTL=90s``). A bad value raises
        :class:`ConfigError` naming the variable. Returns ``self``.
        """
        env = os.environ if environ is None else environ
        for name, attr in ENVIRONMENT_VARIABLES.items():
            value = env.get(name, "")
            if not value:
                continue
            try:
                setattr(self, attr, _convert(attr, value))
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        return self


#: How ``KITE_METRICS`` and other yes/no variables may be spelled.
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_LOG_FORMATS = ("plain", "json")


def _convert(attr: str, value: str) -> int | float | str | bool:
    if attr == "metrics":
        try:
            return _BOOLEANS[value.strip().lower()]
        except KeyError:
            raise ValueError(f"expected 1/0, true/false, yes/no or on/off, got {value!r}") from None
    if attr == "log_format":
        if value.strip().lower() not in _LOG_FORMATS:
            raise ValueError(f"unknown log format {value!r}; use one of {', '.join(_LOG_FORMATS)}")
        return value.strip().lower()
    if attr == "port":
        try:
            port = int(value)
        except ValueError:
            raise ValueError(f"invalid port {value!r}") from None
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range 0-65535")
        return port
    if attr == "transport":
        return normalize_transport(value)
    if attr == "verify_ttl":
        return parse_duration(value)  # negative: do not cache trust decisions
    if attr == "drain_timeout":
        seconds = parse_duration(value)
        if seconds < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return seconds
    if attr in ("timeout", "dial_timeout"):
        seconds = parse_duration(value)
        if seconds <= 0:
            raise ValueError(f"duration must be positive, got {value!r}")
        return seconds
    return value
