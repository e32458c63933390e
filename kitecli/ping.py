"""``kitecli ping URL``: call ``kite.ping`` again and again and print round-trip times, like ping(8)."""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from .errors import EXIT_ANSWERED_ERROR, EXIT_INTERRUPTED, EXIT_OK
from .output import print_json_line
from .values import duration

DESCRIPTION = """\
Call kite.ping on the kite at URL every --interval and print each round trip's time,
then (at the end, or on Ctrl-C) the calls answered and min/avg/max/p99 like ping(8).
Without --count it runs until interrupted. Exits 0 when every call was answered, 1 when
some were not, 2 when the kite cannot be reached, 130 when interrupted."""

EPILOG = """\
examples:
  kitecli ping 127.0.0.1:3636 --count 5
  kitecli ping --json --interval 100ms --count 20 http://127.0.0.1:3636/kite"""


def add_parsers(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("ping", parents=parents, help="call kite.ping repeatedly and print round-trip times",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", metavar="URL", help="the kite's URL")
    p.add_argument("-c", "--count", type=_positive, metavar="N", help="stop after N calls (default: until Ctrl-C)")
    p.add_argument("-i", "--interval", type=duration, default=1.0, metavar="DURATION",
                   help="time between calls (default 1s)")
    p.set_defaults(run=run)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: a whole number above 0")
    return n


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (``fraction`` 0..1)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary(url: str, sent: int, times_ms: list[float], elapsed: float) -> dict[str, Any]:
    """What the run measured: calls, answers, loss and min/avg/max/p99 in milliseconds."""
    out: dict[str, Any] = {
        "url": url,
        "calls": sent,
        "answered": len(times_ms),
        "lost_percent": round(100.0 * (sent - len(times_ms)) / sent, 1) if sent else 0.0,
        "time_ms": round(elapsed * 1000, 1),
    }
    if times_ms:
        out.update(min_ms=round(min(times_ms), 3), avg_ms=round(sum(times_ms) / len(times_ms), 3),
                   max_ms=round(max(times_ms), 3), p99_ms=round(percentile(times_ms, 0.99), 3))
    return out


def _print_summary(s: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json_line({"summary": s})
        return
    print(f"--- {s['url']} ping statistics ---")
    print(f"{s['calls']} calls, {s['answered']} answered, {s['lost_percent']:g}% lost, time {s['time_ms']:.0f} ms")
    if s["answered"]:
        print(f"rtt min/avg/max/p99 = {s['min_ms']:.3f}/{s['avg_ms']:.3f}/{s['max_ms']:.3f}/{s['p99_ms']:.3f} ms",
              flush=True)


def run(args: argparse.Namespace) -> int:
    import gevent

    from kite import KiteError

    from .local import dial, kite_url, local_kite

    url = kite_url(args.url)
    k = local_kite(args)
    times_ms: list[float] = []
    sent = 0
    started = time.monotonic()
    interrupted = False
    try:
        client = dial(k, url, args)
        try:
            if not args.json:
                print(f"PING {url} (kite.ping)", flush=True)
            while args.count is None or sent < args.count:
                if sent:
                    gevent.sleep(args.interval)
                sent += 1
                t0 = time.perf_counter()
                try:
                    client.tell_with_timeout("kite.ping", args.timeout)
                except KiteError as exc:
                    _report(args, sent, None, f"{exc.type}: {exc.message}")
                    continue
                ms = (time.perf_counter() - t0) * 1000
                times_ms.append(ms)
                _report(args, sent, ms, None)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            client.close()
    finally:
        k.close()
    _print_summary(summary(url, sent, times_ms, time.monotonic() - started), args.json)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if len(times_ms) == sent else EXIT_ANSWERED_ERROR


def _report(args: argparse.Namespace, seq: int, ms: float | None, error: str | None) -> None:
    if args.json:
        print_json_line({"seq": seq, "ms": round(ms, 3)} if ms is not None else {"seq": seq, "error": error})
    elif error is None:
        print(f"pong from {args.url}: seq={seq} time={ms:.3f} ms", flush=True)
    else:
        print(f"no pong from {args.url}: seq={seq} {error}", flush=True)
