"""What can go wrong for a user of kitecli, and the exit code each failure gets.

==== =====================================================================
code meaning
==== =====================================================================
0    ok
1    the kite (or Kontrol) answered with an error; ``type: message`` on stderr
2    could not reach the kite or Kontrol (dial, TLS, timeout before connecting)
64   bad usage (usage text on stderr)
130  interrupted (Ctrl-C)
==== =====================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ANSWERED_ERROR = 1
EXIT_UNREACHABLE = 2
EXIT_USAGE = 64  # sysexits.h EX_USAGE
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class CliError(Exception):
    """A failure reported as one line on stderr (``kitecli: <message>``) and an exit code."""

    exit_code = EXIT_ANSWERED_ERROR

    def __init__(self, message: str, *, details: dict[str, object] | None = None):
        super().__init__(message)
        self.message = message
        #: What ``--json`` prints on stdout for this failure (``{"error": details}``).
        self.details = details if details is not None else {"message": message}


class UsageError(CliError):
    """The command line is wrong: a bad flag, a missing argument, a malformed value."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, usage: str = ""):
        super().__init__(message)
        #: The usage text of the command concerned, printed before the message.
        self.usage = usage


class UnreachableError(CliError):
    """The kite or Kontrol could not be reached: no answer came from it at all."""

    exit_code = EXIT_UNREACHABLE


class AnsweredError(CliError):
    """The kite answered, with an error (``type: message``), or found nothing."""

    exit_code = EXIT_ANSWERED_ERROR
