"""A link template's ``gates:``: one gate per expanded link, written as a matrix of the ``each`` values.

DCL (Minami et al., ACCV 2020) gives every cell of its N×N link matrix its own gate, and its search
names one gate per cell. With ``gates:`` a template keeps one entry per matrix while each cell can be
set, in the file or by an ordinary override (``links.1.gates.net1.net2=correct``): the mapping is
nested once per ``each`` variable, in the order they are written (rows, then columns).
"""
from __future__ import annotations

from typing import Any

from ..errors import GraphError, unknown_name
from .records import Where

Cell = tuple[dict[str, Any], Where]  # a gate as a mapping with `kind`, and where it was written


def gate_mapping(value: Any, where: Where) -> dict[str, Any]:
    """``correct`` is short for ``{kind: correct}``; anything else must be such a mapping."""
    if isinstance(value, str):
        return {"kind": value}
    if isinstance(value, dict) and isinstance(value.get("kind"), str):
        return dict(value)
    raise GraphError("a cell of `gates` must be a gate", where=where,
                     expected="a gate name (`correct`) or a mapping with `kind` (`{kind: ramp, length: 4}`)")


def cell_gates(gates: dict[str, Any], each: dict[str, list[str]], made: set[tuple[str, ...]],
               where: Where) -> dict[tuple[str, ...], Cell]:
    """The gate of each combination of ``each`` values that ``gates`` sets.

    ``made`` holds the combinations the template expands to; a cell naming a value the variable
    does not take, or a combination that is skipped (``distinct``), is an error: it would be ignored.
    """
    names = list(each)
    cells: dict[tuple[str, ...], Cell] = {}

    def walk(node: Any, depth: int, key: tuple[str, ...], here: Where) -> None:
        if depth == len(names):
            if key not in made:
                cell = " / ".join(f"{n}={v}" for n, v in zip(names, key))
                raise GraphError(f"`gates` sets a cell ({cell}) for which the template makes no link", where=here,
                                 suggestion="`distinct: true` skips combinations with a repeated value; "
                                            "leave that cell out")
            cells[key] = (gate_mapping(node, here), here)
            return
        variable = names[depth]
        if not isinstance(node, dict):
            raise GraphError(f"`gates` needs a mapping here, one entry per value of `{variable}`", where=here,
                             expected=f"{len(names)} nested level(s) of mappings, in the order of `each` "
                                      f"({', '.join(names)}), then a gate")
        for value, child in node.items():
            if value not in each[variable]:
                raise unknown_name(f"`{variable}` value", str(value), each[variable], here + (value,))
            walk(child, depth + 1, key + (value,), here + (value,))

    walk(gates, 0, (), where)
    return cells
