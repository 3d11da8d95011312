"""A seed group's folder: the one place that knows its file names, and reads and writes its files.

A group is one graph run once per seed: ``group.yaml`` (the resolved config, ``train.seeds``
included), one run directory per seed (``seed-1/``, ...), ``logs/`` when seeds run side by side,
and the summary over seeds (``group-summary.json`` and ``.md``). It is a :class:`RunDir` for its
lock and atomic writes, but not a run: it has no ``config.yaml``, so ``eval`` and ``report``
refuse it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .rundir import SUMMARY, RunDir

GROUP_CONFIG = "group.yaml"
GROUP_SUMMARY = "group-summary.json"
GROUP_TABLE = "group-summary.md"
LOGS = "logs"
SEED_PREFIX = "seed-"
GROUP_FILES = (GROUP_CONFIG, GROUP_SUMMARY, GROUP_TABLE, LOGS, f"{SEED_PREFIX}*")  # what --overwrite removes


class GroupDir(RunDir):
    """A seed group at ``path`` (which need not exist yet)."""

    def is_group(self) -> bool:
        return (self.path / GROUP_CONFIG).is_file()

    def write_group_config(self, document: dict[str, Any]) -> None:
        self._write(GROUP_CONFIG, yaml.safe_dump(document, sort_keys=False))

    def read_group_config(self) -> dict[str, Any] | None:
        return self._mapping(GROUP_CONFIG, yaml.safe_load, yaml.YAMLError)

    def seed_run(self, seed: int) -> RunDir:
        return RunDir(self.path / f"{SEED_PREFIX}{seed}")

    def log(self, seed: int) -> Path:
        return self.path / LOGS / f"{SEED_PREFIX}{seed}.log"

    def seed_summary(self, seed: int) -> dict[str, Any] | None:
        """The seed's ``summary.json``: written when its run has finished, None before."""
        return self.seed_run(seed).read_json(SUMMARY)

    def remove_group_files(self) -> None:
        """Delete what a group writes (its seeds' runs included), for ``--overwrite``; other files stay."""
        self.remove_matching(GROUP_FILES)
