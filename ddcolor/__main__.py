"""``python -m ddcolor``: see ddcolor/cli/."""

from .cli import main

raise SystemExit(main())
