"""exp2: dial the math kite forever and ask for a square every second.

Demonstrates reconnects (stop and restart the math kite while this runs) and call timeouts.

    python -m examples.exp2.client --url http://127.0.0.1:3636/kite
"""

import argparse
import logging
import random

import gevent

from kite import Kite, KiteError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3636/kite")
    parser.add_argument("--count", type=int, default=0, help="stop after this many calls (0 = forever)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    k = Kite("exp2", "1.0.0")
    client = k.new_client(args.url)
    client.on_connect(lambda c: print("connected to", c.url))
    client.on_disconnect(lambda c: print("disconnected; redialing"))
    client.dial_forever().wait()
    done = 0
    while args.count == 0 or done < args.count:
        n = random.randint(1, 10)
        try:
            print(f"square({n}) = {client.tell_with_timeout('square', 4, n):g}")
        except KiteError as exc:
            print("call failed:", exc)
        done += 1
        gevent.sleep(1)
    client.close()


if __name__ == "__main__":
    main()
