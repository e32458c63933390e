"""``python -m kitecli``."""

from kitecli.main import main

raise SystemExit(main())
