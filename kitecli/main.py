"""The ``kitecli`` command line: global options, the commands, and how failures end.

Global options are accepted before or after the command name (``kitecli --json tell …``
and ``kitecli tell --json …`` mean the same). Each command lives in its own module and
adds its parser with ``add_parsers(subparsers, parents)``; only the module of the command
being run is imported, so that a ``tell`` starts quickly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from . import __version__
from .errors import EXIT_INTERRUPTED, EXIT_OK, CliError, UsageError
from .values import TRANSPORTS, duration

#: Command name -> the module that implements it (imported only when that command runs).
COMMANDS = {
    "tell": "tell",
    "ping": "ping",
    "query": "query",
    "watch": "query",
    "register": "register",
    "showkey": "showkey",
    "install": "bundles",
    "list": "bundles",
    "run": "bundles",
    "uninstall": "bundles",
    "version": "main",
}
#: The commands that talk to kites: they run monkey-patched (the XHR transports use requests),
#: the others start without gevent at all.
NETWORK_COMMANDS = frozenset({"tell", "ping", "query", "watch", "register"})
#: One line per command for ``kitecli --help``.
SUMMARIES = {
    "tell": "call a method of a kite and print its result",
    "ping": "call kite.ping repeatedly and print the round-trip times",
    "query": "list the kites Kontrol knows that match a query",
    "watch": "stream the kites registering and deregistering with Kontrol",
    "register": "get a kite.key from Kontrol (registerMachine)",
    "showkey": "print the claims of the local kite.key",
    "install": "install a kite bundle (a Python distribution with a kite.kites entry point)",
    "list": "list the installed kite bundles",
    "run": "run an installed kite bundle",
    "uninstall": "remove an installed kite bundle",
    "version": "print kitecli's version",
}
#: Default of --timeout: kitectl's.
DEFAULT_TIMEOUT = 4.0

log = logging.getLogger("kitecli")


class Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors raise :class:`UsageError` (exit 64) instead of exiting 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


def global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes; ``suppress`` keeps a subcommand from resetting them to defaults."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="machine-readable output: one JSON document, or JSON lines for streams")
    group.add_argument("--kite-home", metavar="DIR", default=default(None),
                       help="where kite.key lives (default: $KITE_HOME, else ~/.kite)")
    group.add_argument("--timeout", metavar="DURATION", type=duration, default=default(DEFAULT_TIMEOUT),
                       help="Go duration like 4s, 1m, 500ms (default 4s)")
    group.add_argument("--transport", choices=TRANSPORTS, default=default("websocket"),
                       help="how to reach kites (default websocket)")
    group.add_argument("--insecure", action="store_true", default=default(False),
                       help="skip TLS certificate verification")
    group.add_argument("-v", "--verbose", action="store_true", default=default(False),
                       help="debug logs on stderr")


def build_parser(command: str | None) -> Parser:
    """The parser; only ``command``'s module (if any) adds its subparser(s) in full."""
    parser = Parser(prog="kitecli", description=__doc__.splitlines()[0] if __doc__ else None,
                    epilog="Exit codes: 0 ok, 1 the kite answered with an error, 2 could not reach it, "
                           "64 bad usage, 130 interrupted.")
    global_options(parser, suppress=False)
    parents = [Parser(add_help=False)]
    global_options(parents[0], suppress=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    parser.set_defaults(usage_of=lambda name: subparsers.choices[name].format_usage())
    wanted = COMMANDS.get(command or "")
    loaded: set[str] = set()
    for name, module_name in COMMANDS.items():
        if module_name == wanted and module_name not in loaded:
            loaded.add(module_name)
            module = sys.modules[__name__] if module_name == "main" else importlib.import_module(
                f"kitecli.{module_name}")
            module.add_parsers(subparsers, parents)
        elif module_name != wanted:
            subparsers.add_parser(name, help=SUMMARIES[name], parents=parents)
    return parser


def add_parsers(subparsers: argparse._SubParsersAction[Parser], parents: list[Parser]) -> None:
    """``kitecli version``."""
    p = subparsers.add_parser("version", help=SUMMARIES["version"], parents=parents,
                              description=SUMMARIES["version"])
    p.set_defaults(run=print_version)


def print_version(args: argparse.Namespace) -> int:
    if args.json:
        from .output import print_json

        print_json({"version": __version__, "name": "kitecli"}, args)
    else:
        print(f"kitecli {__version__}")
    return EXIT_OK


def _command_of(argv: Sequence[str]) -> str | None:
    """The first word that names a command (global options may come before it)."""
    return next((word for word in argv if word in COMMANDS), None)


def _own_words(argv: list[str], command: str | None) -> list[str]:
    """kitecli's words: after ``run NAME`` every word is the bundle's, ``--json`` included."""
    if command != "run":
        return argv
    start = argv.index(command) + 1
    name = next((i for i in range(start, len(argv)) if not argv[i].startswith("-")), len(argv))
    return argv[: name + 1]


def main(argv: Sequence[str] | None = None) -> int:
    """Run kitecli; returns the exit code (see :mod:`kitecli.errors`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    json_requested = "--json" in _own_words(argv, command)
    if command in NETWORK_COMMANDS:
        from gevent import monkey

        monkey.patch_all()  # before anything imports socket or ssl (parsing a --timeout imports kite)
        import gevent

        hub = gevent.get_hub()
        hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)  # Ctrl-C is ours to report, not the hub's
    try:
        parser = build_parser(command)
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError("no command given", parser.format_usage())
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
        if args.kite_home:
            os.environ["KITE_HOME"] = os.path.abspath(args.kite_home)
        run: Callable[[argparse.Namespace], int] = args.run
        try:
            return run(args)
        except UsageError as exc:
            exc.usage = exc.usage or args.usage_of(args.command)
            raise
    except CliError as exc:
        return report(exc, json_requested)
    except KeyboardInterrupt:
        print("kitecli: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``kitecli watch | head``): nothing more to say.
        sys.stderr.close()
        return EXIT_OK


def report(exc: CliError, json_requested: bool) -> int:
    """Print a failure: usage first for usage errors, one ``kitecli: …`` line, JSON on stdout with --json."""
    if isinstance(exc, UsageError) and exc.usage:
        sys.stderr.write(exc.usage)
    print(f"kitecli: {exc.message}", file=sys.stderr)
    if json_requested and not isinstance(exc, UsageError):
        from .output import print_json_line

        print_json_line({"error": exc.details})
    return exc.exit_code
