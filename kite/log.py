"""Logging for kites: one ``logging`` logger per kite, level from ``KITE_LOG_LEVEL``."""

from __future__ import annotations

import logging
import os
import signal

#: Go's level names mapped to ``logging`` levels (FATAL is CRITICAL).
LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "FATAL": logging.CRITICAL,
    "CRITICAL": logging.CRITICAL,
}


def level_from_env(default: int = logging.INFO) -> int:
    """The level named by ``KITE_LOG_LEVEL``; a bad name raises ``ValueError`` naming the variable."""
    name = os.environ.get("KITE_LOG_LEVEL", "").strip().upper()
    if not name:
        return default
    try:
        return LEVELS[name]
    except KeyError:
        raise ValueError(f"KITE_LOG_LEVEL: unknown level {name!r}; use one of {', '.join(LEVELS)}") from None


def new_logger(name: str) -> logging.Logger:
    """The logger ``kite.<name>``, at the level of ``KITE_LOG_LEVEL`` (default INFO).

    No handler is installed: the application configures ``logging`` as it likes.
    """
    logger = logging.getLogger(f"kite.{name}")
    logger.setLevel(level_from_env())
    return logger


def setup_signal_handler(logger: logging.Logger) -> None:
    """Toggle ``logger`` between DEBUG and its current level on SIGUSR2."""
    previous = [logger.level if logger.level != logging.DEBUG else logging.INFO]

    def toggle(signum: int, frame: object) -> None:
        if logger.level == logging.DEBUG:
            logger.setLevel(previous[0])
        else:
            previous[0] = logger.level
            logger.setLevel(logging.DEBUG)
        logger.info("log level is now %s", logging.getLevelName(logger.level))

    signal.signal(signal.SIGUSR2, toggle)
