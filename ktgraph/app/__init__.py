"""The application: what users run (``ktgraph run``, ``eval``, ``pick``, ``report``, ``render``, the CLI)."""
