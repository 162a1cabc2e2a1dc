"""``python -m ddcolor``: see ddcolor/cli.py."""

from .cli import main

raise SystemExit(main())
