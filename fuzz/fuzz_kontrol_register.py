"""Fuzz harness: Kontrol's HTTP ``/register`` body (kontrol.http.register_answer).

Invariant: any body gets an HTTP answer of 200, 400 or 401 with a JSON ``{"err"}`` for the
errors: never an exception (a 500 traceback).
"""

import json

import atheris
import harness

with atheris.instrument_imports():
    from kite.config import Config
    from kontrol import Kontrol
    from kontrol.http import register_answer

_config = Config()
_config.username, _config.ip, _config.port = "koding", "127.0.0.1", 0
KONTROL = Kontrol(_config, "memory")
KEY = KONTROL.register_user("alice")


def TestOneInput(data: bytes) -> None:
    bodies = [data]
    if data[:1] == b"K":  # the right shape around the fuzzed bytes: a genuine key, a fuzzed URL and kite
        text = data[1:].decode("utf-8", "replace")
        body = {"url": text, "kite": {"name": text, "id": text}, "auth": {"type": "kiteKey", "key": KEY}}
        bodies.append(json.dumps(body).encode())
    for body in bodies:
        answer = register_answer(KONTROL, body)
        assert answer.status in (200, 400, 401), answer
        if answer.status != 200:
            assert isinstance(json.loads(answer.body)["err"], str)


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
