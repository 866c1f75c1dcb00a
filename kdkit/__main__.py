"""``python -m kdkit`` runs the ``kdkit`` command."""

from kdkit.cli import main

raise SystemExit(main())
