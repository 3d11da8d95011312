"""``python -m ktgraph`` is the ``ktgraph`` command."""
import sys

from .app.cli import main

sys.exit(main())
