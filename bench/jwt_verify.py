"""Token and kite-key verification: today's code (PyJWT) against a baseline (the hand-written parser).

    .venv/bin/python bench/jwt_verify.py [--baseline REF] [--rounds R] [--seconds S] [--quick]

The baseline's ``kite/wire/jws.py`` and ``kite/auth.py`` are read with ``git show REF:…``
(read-only; default ``8d29c72``, the last commit with the hand-written JWS parser) and
loaded as throw-away modules next to today's, so both run in this process on the same
kite, config, keys and credentials. Rows, per credential (a Kontrol token for
``/alice/prod/math``, ~570 characters; a kite key of ``alice``, ~1.2 KB):

* **cached**: ``Verifier.verify_token`` / ``verify_kite_key`` of a credential it has
  verified before -- what every call after the first one costs;
* **uncached**: the same with the verified-credential cache emptied before each call
  (the Kontrol key's trust decision stays cached, as it is in a running kite): parse,
  RSA check, policy;
* **decode**: ``decode_jwt`` alone (no signature), what the token renewer and Kontrol's
  handlers use;
* **forged, 16 KiB**: a well-formed RS256 token just under the size cap with a bad signature,
  refused: what a peer sending fresh garbage makes the kite spend per call.

Each figure is the best of ``--rounds`` timeit runs of about ``--seconds`` each, old and
new alternating; the ratio is new / old (1.00: the same cost).
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import subprocess
import sys
import time
import timeit
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kite import KiteError, testutil  # noqa: E402
from kite import auth as new_auth  # noqa: E402
from kite.wire import jws as new_jws  # noqa: E402

#: The last commit whose kite/wire/jws.py parsed and verified JWS by hand.
DEFAULT_BASELINE = "8d29c72"


def git_show(ref: str, path: str) -> str:
    """The text of ``path`` at ``ref`` (``git show``, read-only)."""
    return subprocess.run(["git", "show", f"{ref}:{path}"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def load_module(name: str, source: str) -> types.ModuleType:
    """``source`` as a fresh module ``name`` (registered in ``sys.modules`` while it runs)."""
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def load_baseline(ref: str) -> tuple[types.ModuleType, types.ModuleType]:
    """The baseline's ``(jws, auth)``; its relative imports point at today's kite (and its own jws)."""
    jws = load_module("baseline_jws", git_show(ref, "kite/wire/jws.py"))
    auth_source = git_show(ref, "kite/auth.py").replace("from .wire.jws import", "from baseline_jws import")
    auth_source = auth_source.replace("from .", "from kite.")
    return jws, load_module("baseline_auth", auth_source)


def per_call_us(fn: Callable[[], Any], seconds: float) -> float:
    """Microseconds per call of ``fn``: one timeit run of about ``seconds``."""
    timer = timeit.Timer(fn)
    number, elapsed = timer.autorange()
    number = max(1, int(number * seconds / max(elapsed, 1e-9)))
    return timer.timeit(number) / number * 1e6


def forged_token() -> str:
    """An RS256 token of about 15.7 KB (under the 16 KiB cap) with the right issuer and a wrong signature."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = {"iss": testutil.KONTROL_USER, "sub": "mallory", "aud": "/", "exp": 4_000_000_000, "pad": "a" * 11_300}
    return f"{b64(json.dumps({'alg': 'RS256'}).encode())}.{b64(json.dumps(claims).encode())}.{b64(bytes(256))}"


def rows(auth_module: types.ModuleType, jws_module: types.ModuleType) -> dict[str, Callable[[], Any]]:
    """The timed calls of one version, by row name, on a fresh kite and verifier."""
    kite = testutil.new_kite("math", username="alice", environment="prod")
    verifier = auth_module.Verifier(kite)
    token = testutil.new_token("bob", "/alice/prod/math")
    kite_key = testutil.new_kite_key("alice")
    assert verifier.verify_token(token) == "bob" and verifier.verify_kite_key(kite_key) == "alice"
    results = verifier._results
    forged = forged_token()

    def uncached_token() -> str:
        results.clear()
        return str(verifier.verify_token(token))

    def uncached_kite_key() -> str:
        results.clear()
        return str(verifier.verify_kite_key(kite_key))

    def refuse_forged() -> None:
        try:
            verifier.verify_token(forged)
        except KiteError:
            return
        raise AssertionError("a forged token was accepted")

    return {
        "token, forged 16 KiB": refuse_forged,
        "token, cached": lambda: verifier.verify_token(token),
        "token, uncached": uncached_token,
        "token, decode only": lambda: jws_module.decode_jwt(token),
        "kite key, cached": lambda: verifier.verify_kite_key(kite_key),
        "kite key, uncached": uncached_kite_key,
        "kite key, decode only": lambda: jws_module.decode_jwt(kite_key),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE,
                        help=f"git ref of the old code (default {DEFAULT_BASELINE})")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the best is kept (default 5)")
    parser.add_argument("--seconds", type=float, default=0.3, help="seconds per timed run (default 0.3)")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 0.1 s")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 3, 0.1

    old_jws, old_auth = load_baseline(args.baseline)
    versions = {"old": rows(old_auth, old_jws), "new": rows(new_auth, new_jws)}
    best: dict[tuple[str, str], float] = {}
    started = time.monotonic()
    for round_ in range(args.rounds):
        order = ("old", "new") if round_ % 2 == 0 else ("new", "old")
        for name in versions["old"]:
            for version in order:
                us = per_call_us(versions[version][name], args.seconds)
                best[(version, name)] = min(us, best.get((version, name), us))

    print(f"JWT verification, µs per call: {args.baseline} (old, hand-written) vs the working tree (new, PyJWT); "
          f"best of {args.rounds} rounds of ~{args.seconds} s ({time.monotonic() - started:.0f} s), "
          f"Python {sys.version.split()[0]}")
    width = max(len(name) for name in versions["old"])
    print(f"{'row':<{width}}  {'old µs':>8}  {'new µs':>8}  {'new/old':>7}")
    print(f"{'-' * width}  {'-' * 8}  {'-' * 8}  {'-' * 7}")
    for name in versions["old"]:
        old, new = best[("old", name)], best[("new", name)]
        print(f"{name:<{width}}  {old:8.2f}  {new:8.2f}  {new / old:7.2f}")


if __name__ == "__main__":
    main()
