"""``python -m kontrol``: see :mod:`kontrol.cli`."""

from .cli import main

main()
