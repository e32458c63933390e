"""The math kite: ``square`` a number, with the handler chain of the Go example.

Run it standalone::

    python -m examples.math.server --port 3636

or registered to the Kontrol named in its kite.key (see ``examples/quickstart.py``)::

    python -m examples.math.server --port 3636 --register

or under gunicorn (a Kite is a WSGI app)::

    gunicorn -k kite.server.GeventKiteWorker -b 127.0.0.1:3636 examples.math.server:app
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402

from kite import Kite, Request  # noqa: E402


def square(r: Request) -> float:
    """``square(n)`` or Go's ``square({"Number": n, "Name": s})``; tells the caller via ``kite.log``."""
    arg = r.args.one()
    if isinstance(arg.raw, dict):
        number = float(arg.must_map().get("Number", 0))
        name = arg.raw.get("Name", "")
    else:
        number, name = arg.must_float64(), ""
    result = number * number
    print(f"{r.context.get('greeting', '')} {name} asked for the square of {number:g}")
    # Call back into the caller over the same connection, without waiting.
    r.client.go_with_timeout("kite.log", 4, f"Message from {r.local_kite.name}: square of {number:g} is {result:g}")
    return result


def build_kite() -> Kite:
    k = Kite("math", "1.0.0")
    k.config.disable_authentication = True
    k.pre_handle_func(lambda r: r.context.update(greeting="Hello from kite pre-handler!"))
    k.post_handle_func(lambda r: print("kite post-handler: done with", r.method))
    k.handle_func("square", square).pre_handle_func(lambda r: print("method pre-handler for", r.method))
    return k


app = build_kite()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ip", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3636)
    parser.add_argument("--register", action="store_true", help="register to Kontrol (URL from kite.key)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app.config.ip, app.config.port = args.ip, args.port
    if not args.register:
        app.run()
        return
    import gevent

    server = gevent.spawn(app.run)
    app.server_ready_notify().wait()
    app.register_forever(app.url)  # re-registers by itself whenever Kontrol comes back
    server.join()


if __name__ == "__main__":
    main()
