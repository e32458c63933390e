"""The ``kontrol`` command (PROTOCOL.md §7.13): run a Kontrol, or write its first kite.key.

Options come from flags, else ``KONTROL_<NAME>`` environment variables, else defaults::

    kontrol --initial --username koding --kontrolurl http://127.0.0.1:4000/kite
    kontrol                        # sqlite in $KITE_HOME/kontrol.db, port 4000

With no key pair configured (``--publickeyfile``/``--privatekeyfile``), the first
run generates one and writes it next to the kite.key; later runs load it from
there (whatever the storage, so kite keys issued before stay valid) and store it.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # a server entry point: patch before anything imports socket or ssl

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402

from kite import kitekey  # noqa: E402
from kite.config import Config  # noqa: E402

from .keypairs import generate_pem_pair  # noqa: E402
from .kontrol import DEFAULT_PORT, Kontrol, MachineAuthenticator  # noqa: E402
from .machines import password_authenticator  # noqa: E402
from .supervisor import Supervisor  # noqa: E402

log = logging.getLogger("kontrol")

#: (flag, environment variable suffix, default, help)
OPTIONS = [
    ("ip", "IP", "0.0.0.0", "address to listen on"),
    ("port", "PORT", "0", f"port to listen on (0: {DEFAULT_PORT})"),
    ("username", "USERNAME", "", "Kontrol's user, the issuer of its keys and tokens (--initial)"),
    ("kontrolurl", "KONTROLURL", "", "Kontrol's own URL, written into the kite keys it issues"),
    ("registerurl", "REGISTERURL", "", "URL Kontrol registers for itself (default: --kontrolurl)"),
    ("publickeyfile", "PUBLICKEYFILE", "", "RSA public key PEM"),
    ("privatekeyfile", "PRIVATEKEYFILE", "", "RSA private key PEM"),
    (
        "storage",
        "STORAGE",
        "sqlite",
        "sqlite, sqlite:///file.db, memory, etcd://host:port, etcd2://host:port, "
        "postgres://user:password@host:port/dbname, or postgres (set by KONTROL_POSTGRES_*)",
    ),
    ("machines", "MACHINES", "", "etcd endpoints host:port (with --storage etcd or etcd2)"),
    ("tlscertfile", "TLSCERTFILE", "", "TLS certificate PEM (serve https/wss)"),
    ("tlskeyfile", "TLSKEYFILE", "", "TLS key PEM"),
    ("version", "VERSION", "0.0.1", "the Kontrol kite's version"),
    ("machine-password-file", "MACHINE_PASSWORD_FILE", "",
     "open registerMachine (kitecli register) to callers who send the password in this file"),
    ("machine-users", "MACHINE_USERS", "", "with --machine-password-file: only these users (comma-separated)"),
    ("dashboard-password-file", "DASHBOARD_PASSWORD_FILE", "",
     "with --dashboard: also let the users of this file (lines user:hash) log in"),
    ("workers", "WORKERS", "0",
     "processes serving the port (SO_REUSEPORT) on the shared storage; 0: one per CPU. memory and sqlite "
     "storage run one process (an in-memory store cannot be shared; sqlite takes one writer)"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kontrol", description=__doc__.splitlines()[0])
    for flag, env, default, text in OPTIONS:
        default = os.environ.get(f"KONTROL_{env}", default)
        parser.add_argument(f"--{flag}", default=default, help=f"{text} [KONTROL_{env}]")
    initial_env = os.environ.get("KONTROL_INITIAL", "").lower() in ("1", "true", "yes")
    parser.add_argument("--initial", action="store_true", default=initial_env, help="write the first kite.key and exit")
    dashboard_env = os.environ.get("KONTROL_DASHBOARD", "").lower() in ("1", "true", "yes")
    parser.add_argument("--dashboard", action="store_true", default=dashboard_env,
                        help="serve the live registry page at /dashboard/ (log in with a kite key) [KONTROL_DASHBOARD]")
    parser.add_argument("--dashboard-hash-password", metavar="USER", default="",
                        help="read a password (stdin) and print the --dashboard-password-file line of USER")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG")
    args = parser.parse_args(argv)
    try:
        args.port = int(args.port)
    except ValueError:
        parser.error(f"KONTROL_PORT/--port: not a number: {args.port!r}")
    return args


def storage_url(args: argparse.Namespace) -> str:
    """The storage to open, from --storage and --machines."""
    kind = args.storage
    if kind == "sqlite":
        os.makedirs(kitekey.kite_home(), mode=0o700, exist_ok=True)
        return os.path.join(kitekey.kite_home(), "kontrol.db")
    if kind in ("etcd", "etcd2"):
        # Every endpoint: the storage fails over from one member to the next.
        machines = [m.strip().removeprefix("http://") for m in args.machines.split(",") if m.strip()]
        return f"{kind}://{','.join(machines or ['127.0.0.1:2379'])}"
    return kind


def key_pair(args: argparse.Namespace) -> tuple[str, str] | None:
    """The configured key pair PEMs, or ``None``."""
    if not args.publickeyfile and not args.privatekeyfile:
        return None
    if not (args.publickeyfile and args.privatekeyfile):
        sys.exit("kontrol: give both --publickeyfile and --privatekeyfile (or neither)")
    with open(args.publickeyfile) as pub, open(args.privatekeyfile) as priv:
        return pub.read(), priv.read()


#: Where the generated key pair lives, under $KITE_HOME: (public, private) file names.
KEY_PAIR_DIR = "kontrol"
KEY_PAIR_FILES = ("key_pub.pem", "key.pem")


def _key_pair_paths() -> tuple[str, str]:
    directory = os.path.join(kitekey.kite_home(), KEY_PAIR_DIR)
    return os.path.join(directory, KEY_PAIR_FILES[0]), os.path.join(directory, KEY_PAIR_FILES[1])


def saved_key_pair() -> tuple[str, str] | None:
    """The pair an earlier run generated under $KITE_HOME/kontrol, or ``None`` when there is none.

    Whatever the storage, these files are loaded and never overwritten: every
    kite.key issued before was signed with them.
    """
    paths = _key_pair_paths()
    present = [os.path.exists(p) for p in paths]
    if not any(present):
        return None
    if not all(present):
        found, missing = (paths[0], paths[1]) if present[0] else (paths[1], paths[0])
        sys.exit(f"kontrol: found {found} but not {missing}: restore it, or remove both to generate a new pair")
    with open(paths[0]) as pub, open(paths[1]) as priv:
        return pub.read(), priv.read()


def generated_key_pair() -> tuple[str, str]:
    """A new pair, written as key_pub.pem / key.pem (0600) under $KITE_HOME/kontrol (never over old files)."""
    public, private = generate_pem_pair()
    paths = _key_pair_paths()
    os.makedirs(os.path.dirname(paths[0]), mode=0o700, exist_ok=True)
    for path, pem in zip(paths, (public, private), strict=True):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pem)
    directory = os.path.dirname(paths[0])
    log.info("generated a key pair in %s (%s)", directory, ", ".join(KEY_PAIR_FILES))
    print(f"kontrol: generated a key pair in {directory}", file=sys.stderr)
    return public, private


def machine_authenticator(args: argparse.Namespace) -> MachineAuthenticator:
    """``registerMachine`` opened by --machine-password-file (and --machine-users)."""
    try:
        with open(args.machine_password_file) as f:
            password = f.read().strip()
    except OSError as exc:
        sys.exit(f"kontrol: --machine-password-file: {exc}")
    if not password:
        sys.exit(f"kontrol: --machine-password-file: {args.machine_password_file} is empty")
    users = [u.strip() for u in args.machine_users.split(",") if u.strip()]
    log.info("registerMachine open with a machine password%s", f" for {', '.join(users)}" if users else "")
    return password_authenticator(password, users)


def build(args: argparse.Namespace) -> Kontrol:
    """A Kontrol from the options, its config from kite.key and KITE_* when present."""
    config = Config.get(kite_key_required=False)
    if args.username:
        config.username = args.username
    if args.kontrolurl:
        config.kontrol_url = args.kontrolurl
    config.ip = args.ip
    config.port = args.port or DEFAULT_PORT
    kontrol = Kontrol(config, storage_url(args), version=args.version, register_url=args.registerurl)
    if args.machine_password_file:
        kontrol.machine_authenticator = machine_authenticator(args)
    pems = key_pair(args) or saved_key_pair()
    if pems is not None:
        kontrol.add_key_pair(*pems)
    elif not kontrol.storage.list_key_pairs():
        kontrol.add_key_pair(*generated_key_pair())
    if args.tlscertfile:
        kontrol.kite.use_tls_file(args.tlscertfile, args.tlskeyfile)
    if args.dashboard:
        try:
            kontrol.enable_dashboard(args.dashboard_password_file or None)
        except (OSError, ValueError) as exc:
            sys.exit(f"kontrol: --dashboard-password-file: {exc}")
    return kontrol


def hash_password_line(username: str) -> str:
    """``--dashboard-hash-password USER``: the password file line for USER, the password read from
    the terminal (asked twice) or from the first line of stdin."""
    import getpass

    from .dashboard import hash_password

    if ":" in username:
        sys.exit("kontrol: --dashboard-hash-password: a user name cannot contain ':'")
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {username}: ")
        if getpass.getpass("again: ") != password:
            sys.exit("kontrol: the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        sys.exit("kontrol: empty password")
    return f"{username}:{hash_password(password)}"


def initial(args: argparse.Namespace) -> None:
    """``--initial``: write Kontrol's own kite.key (``iss = sub = username``) and exit."""
    if not args.username:
        sys.exit("kontrol: --initial needs --username (or KONTROL_USERNAME)")
    kontrol = build(args)
    key = kontrol.register_user(args.username)
    path = kitekey.write(key)
    kontrol.storage.close()
    print(f"kontrol: wrote the kite.key of {args.username!r} to {path}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``kontrol`` console script and ``python -m kontrol``."""
    args = parse_args(argv)
    if args.dashboard_hash_password:
        print(hash_password_line(args.dashboard_hash_password))
        return
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.initial:
        initial(args)
        return
    workers = worker_count(args)
    if workers > 1:
        for handler in logging.getLogger().handlers:  # tell the processes apart
            handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s"))
        first = build(args)  # key pairs made and stored once, before any worker starts
        first.storage.close()
        log.info("storage: %s; %d workers on port %d", storage_url(args), workers, args.port or DEFAULT_PORT)
        kontrol_id = str(uuid.uuid4())  # one Kontrol to its callers: one identity, one registry entry
        stop_timeout = first.kite.config.drain_timeout + WORKER_CLOSE_MARGIN
        supervisor = Supervisor(workers, lambda index: serve(args, kontrol_id, supervisor.stopping_all),
                                stop_timeout)
        status = supervisor.run()
        log.info("kontrol stopped")
        sys.exit(status)
    log.info("storage: %s", storage_url(args))
    serve(args)
    log.info("kontrol stopped")


#: Storage schemes several processes can share (the others run one process).
SHARED_STORAGES = ("etcd://", "etcd2://", "postgres", "postgresql")


def worker_count(args: argparse.Namespace) -> int:
    """How many processes to run: ``--workers`` (0: one per CPU), 1 for memory and sqlite."""
    url = storage_url(args)
    try:
        asked = int(args.workers)
    except ValueError:
        sys.exit(f"kontrol: --workers must be a number, not {args.workers!r}")
    wanted = asked if asked > 0 else os.cpu_count() or 1
    if not url.startswith(SHARED_STORAGES):
        if asked > 1:
            log.warning("--workers %s: storage %s runs in one process", args.workers, url)
        return 1
    return wanted


#: Seconds a ``--workers`` worker gets, past its drain timeout, to close before the supervisor kills it.
WORKER_CLOSE_MARGIN = 5.0


def serve(args: argparse.Namespace, worker_of: str = "", deregisters_self: Callable[[], bool] | None = None) -> int:
    """Build and run one Kontrol until SIGTERM/SIGINT: the first drains (:meth:`Kontrol.shutdown`,
    ``KITE_DRAIN_TIMEOUT``), a second stops at once. ``worker_of``: the kite id shared by the
    ``--workers`` processes, each of which registers the same entry; ``deregisters_self``: whether
    this worker's stop deletes it (:meth:`~kontrol.supervisor.Supervisor.stopping_all`)."""
    kontrol = build(args)
    if worker_of:
        kontrol.kite.reuse_port = True
        kontrol.kite.id = worker_of
    if deregisters_self is not None:
        kontrol.deregisters_self = deregisters_self
    kontrol.run()
    return 0
