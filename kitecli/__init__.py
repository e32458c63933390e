"""kitecli: call, ping, find and watch kites from the command line (the original's kitectl).

``kitecli tell URL METHOD ARGS…`` is the headline; ``kitecli --help`` lists every
command. kitecli is itself a kite named ``kitecli``: it authenticates with the local
kite.key when there is one. Exit codes are documented in :mod:`kitecli.errors`.
"""

#: kitecli's version (also its kite version).
__version__ = "0.1.0"
