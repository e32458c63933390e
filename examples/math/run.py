"""The quick start: serve the math kite and call it through a client, in one process."""

from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402

import gevent  # noqa: E402

from examples.math.server import build_kite  # noqa: E402
from kite import Kite  # noqa: E402


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    math = build_kite()
    math.config.ip, math.config.port = "127.0.0.1", 0
    gevent.spawn(math.run)
    math.server_ready_notify().wait(10)
    print(f"math kite listening on {math.url}")

    caller = Kite("math-cli", "1.0.0")
    with caller.new_client(math.url) as client:
        for n in (2, 4, 12):
            print(f"square({n}) = {client.tell_with_timeout('square', 4, n):g}")
    math.close()


if __name__ == "__main__":
    main()
