"""``python -m ila_core``: see :mod:`ila_core.cli`."""

from .cli import main

raise SystemExit(main())
