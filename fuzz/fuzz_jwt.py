"""Fuzz harness: credentials (kite.wire.jws, and the policy of kite.auth on top).

Invariant: any string given as a token or kite key is decoded or refused with
``AuthenticationError`` by ``decode_jwt``, ``require_rs256``, ``check_time_claims``,
``token_expiry``, ``kite_key_claims`` and a kite's ``verify_token``/``verify_kite_key``.
"""

import atheris
import harness

with atheris.instrument_imports():
    from kite import auth, testutil
    from kite.wire import jws

ALLOWED = harness.ALLOWED
KITE = testutil.new_kite("math", username="alice")


def TestOneInput(data: bytes) -> None:
    token = data.decode("utf-8", "replace")
    checks = [auth.token_expiry, auth.kite_key_claims, KITE.verifier.verify_token, KITE.verifier.verify_kite_key]
    try:
        jwt = jws.decode_jwt(token)
        jws.require_rs256(jwt)
        auth.check_time_claims(jwt.claims, 1_700_000_000.0)
    except ALLOWED:
        pass
    for check in checks:
        try:
            check(token)
        except ALLOWED:
            pass


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
