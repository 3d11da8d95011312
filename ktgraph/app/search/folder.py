"""A search folder: the search it was made for (``search.yaml``, overrides applied) and where its study is
(``search.json``), then one run directory per trial under ``trials/`` and the report.

Running the same command again finds the same folder and continues its study; a folder made for
another file, other overrides or another study is refused, so trials of two searches never mix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ...errors import GraphError
from ...graph import Document
from ...runtime.rundir import RunDir, safe_name
from .space import Search, read_search
from .study import JOURNAL, StudyPlace

SEARCH_FILE = "search.yaml"
PLACE_FILE = "search.json"


def open_folder(file: str | Path, overrides: list[str], *, out: str | None = None, storage: str | None = None,
                study: str | None = None) -> tuple[Search, StudyPlace]:
    """Check the search (every error before any trial), then make or reopen its folder."""
    search, raw = load_search(file, overrides)
    name = safe_name(search.graph.name or "", fallback=safe_name(Path(file).stem))
    folder = Path(out) if out else Path("searches") / (study or name)
    # The journal's path resolved: `--report` and later commands find it from any directory.
    place = StudyPlace(folder, storage or str((folder / JOURNAL).resolve()), study or name)
    saved = folder / SEARCH_FILE
    if saved.is_file():
        different = Document.read(saved).raw != raw
        before = _place(folder)
        if different or (_normal(before["storage"]), before["name"]) != (_normal(place.storage), place.name):
            what = ("another search (file or overrides)" if different
                    else f"the study `{before['name']}` at {before['storage']}")
            raise GraphError(f"the folder holds {what}; nothing in it was touched", file=str(folder),
                             suggestion="give the same file, overrides, --storage and --study to continue it, "
                                        "or another --out")
        return search, place
    if folder.exists() and any(folder.iterdir()):
        raise GraphError("the folder is not empty and holds no search", file=str(folder),
                         suggestion="give --out a new or empty folder")
    written = RunDir(folder)  # atomic writes: a reader never finds half a file
    written.write_text(SEARCH_FILE, yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    written.write_json(PLACE_FILE, {"storage": place.storage, "name": place.name})
    return search, place


def load_search(file: str | Path, overrides: list[str] = ()) -> tuple[Search, dict[str, Any]]:
    """A graph file's search, overrides applied and every choice checked; and the document it was read from."""
    document = Document.read(file).overridden(overrides)
    return read_search(document), document.raw


def read_folder(folder: Path) -> tuple[Search, StudyPlace]:
    """The search a folder was made for, as every worker and ``--report`` read it."""
    if not (folder / SEARCH_FILE).is_file():
        raise GraphError("not a search folder (no search.yaml)", file=str(folder),
                         suggestion="give the folder `ktgraph search` wrote (--out)")
    place = _place(folder)
    return read_search(Document.read(folder / SEARCH_FILE)), StudyPlace(folder, place["storage"], place["name"])


def _place(folder: Path) -> dict[str, str]:
    """Where the folder's study is (``search.json``): a clear error when the file is missing or broken."""
    place = RunDir(folder).read_json(PLACE_FILE)
    if not place or not isinstance(place.get("storage"), str) or not isinstance(place.get("name"), str):
        raise GraphError(f"the search folder's {PLACE_FILE} is missing or unreadable", file=str(folder),
                         suggestion="give the folder `ktgraph search` wrote, or start the search in a new --out")
    return place


def _normal(storage: str) -> str:
    """A storage as compared: a database URL as given, a journal file by its absolute path."""
    return storage if "://" in storage else str(Path(storage).resolve())
