"""``python -m videoiq`` runs the ``videoiq`` command line."""
from .cli import main

raise SystemExit(main())
