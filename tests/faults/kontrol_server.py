"""Kontrol in a process of its own, for the fault tests to SIGKILL and start again.

``python -m tests.faults.kontrol_server SETTINGS_JSON`` serves Kontrol (user ``koding``) on
127.0.0.1 with the settings' port, storage (URL and ``open_storage`` options), key pair PEM
files, registry timings and token lifetime, and prints :data:`READY` once it accepts
connections. SIGTERM closes it; SIGKILL is what the tests send.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

from kite import Config  # noqa: E402
from kontrol import Kontrol  # noqa: E402
from kontrol.storage import open_storage  # noqa: E402

#: The line printed once Kontrol serves.
READY = "kontrol-server ready"
#: Seconds Kontrol may take to bind.
BIND_TIMEOUT = 20.0


def main(settings: dict) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s kontrol %(name)s %(levelname)s %(message)s",
                        stream=sys.stdout)
    config = Config()
    config.username, config.ip, config.port = "koding", "127.0.0.1", settings["port"]
    config.kontrol_url = f"http://127.0.0.1:{settings['port']}/kite"
    storage = open_storage(settings["storage"], **settings.get("storage_options", {}))
    kontrol = Kontrol(config, storage, token_ttl=settings["token_ttl"], token_leeway=settings["token_leeway"],
                      **settings["registry"])
    with open(settings["public_key"]) as public, open(settings["private_key"]) as private:
        kontrol.add_key_pair(public.read(), private.read())
    gevent.signal_handler(signal.SIGTERM, kontrol.close)

    def announce() -> None:
        if kontrol.kite.server_ready_notify().wait(BIND_TIMEOUT):
            print(READY, flush=True)

    gevent.spawn(announce)
    kontrol.run()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
