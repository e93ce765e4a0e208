"""``python -m pyagent`` is the same as the ``pyagent`` command."""

from pyagent.cli import main

raise SystemExit(main())
