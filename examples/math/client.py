"""Call the math kite directly by URL (no Kontrol), like the Go ``math-cli``.

    python -m examples.math.client --url http://127.0.0.1:3636/kite --arg 4
"""

import argparse
import logging

from kite import Kite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3636/kite")
    parser.add_argument("--arg", type=float, default=4)
    parser.add_argument("--transport", default="websocket")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    # No monkey patching needed for the websocket transport: tell() waits on gevent itself.
    with Kite("math-cli", "1.0.0").new_client(args.url, transport=args.transport) as client:
        result = client.tell_with_timeout("square", 4, args.arg)
        print(f"square({args.arg:g}) = {result:g}")


if __name__ == "__main__":
    main()
