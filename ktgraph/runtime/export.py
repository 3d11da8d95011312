"""A path of a trained graph as a standalone module, saved so that plain PyTorch loads and runs it.

The module is an ``nn.Sequential`` of the path's segments and the adapters at its junctions;
it is saved with ``torch.export`` (batch dimension dynamic, else static), or traced with
TorchScript when export fails. Loading it needs no ktgraph.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..bind import BoundGraph
from ..compile import Call, Plan
from ..errors import GraphError
from ..graph import AdapterId
from .fusion import RUNNING, norms, scope_of
from .statistics import Calibration


def path_module(bound: BoundGraph, node: str, calibrated: tuple[Plan, Calibration] | None = None) -> nn.Sequential:
    """The path's segments, with the adapters at its junctions, as one ``nn.Sequential`` in eval mode.

    The modules are the graph's own (not copies): use it for export or inference. With
    ``calibrated`` = (the eval plan, its calibration), a copy whose BatchNorms hold the statistics
    the path was evaluated with: the exported path reproduces its row of the Xross table.
    """
    graph, modules = bound.graph, bound.modules
    node = graph.aliases.get(node, node)
    if node not in graph.paths:
        raise GraphError(f"`{node}` is not a path (a network or a cross path)",
                         expected="one of: " + ", ".join(graph.paths))
    parts: list[nn.Module] = []
    previous = None
    for segment in graph.paths[node].segments:
        if previous is not None and AdapterId(previous, segment) in bound.adapters:
            parts.append(modules.adapters[AdapterId(previous, segment).key])
        parts.append(modules.segments[segment].as_module())
        previous = segment
    chain = nn.Sequential(*parts).eval()
    return chain if calibrated is None else _with_statistics(chain, bound, node, *calibrated)


def _with_statistics(chain: nn.Sequential, bound: BoundGraph, node: str, plan: Plan,
                     calibration: Calibration) -> nn.Sequential:
    """A copy of ``chain`` whose calibrated calls' BatchNorms hold their estimated statistics."""
    found: dict[int, Any] = {}  # deepcopy's memo: the copy of each original object, by id
    copied = copy.deepcopy(chain, found)
    for step in plan.restrict([node]).steps:
        estimates = calibration.buffers.get(step.out) if isinstance(step, Call) else None
        if estimates:
            for prefix, norm in norms(scope_of(bound.modules.module(step.module))[1]):
                held = found[id(norm)]
                for name in RUNNING:
                    getattr(held, name).copy_(estimates[f"{prefix}.{name}"])
    return copied


def export_module(module: nn.Module, example: torch.Tensor, out: str | Path) -> tuple[Path, str]:
    """Save ``module`` so that plain PyTorch can load and run it; returns (file, format).

    First ``torch.export`` (batch dimension dynamic, then static) saved with
    ``torch.export.save`` to ``out``; if both fail, ``torch.jit.trace`` saved with
    ``torch.jit.save`` next to it with a ``.pt`` suffix.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    attempts: list[dict[str, Any]] = [{"dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=65536)},)}, {}]
    errors = []
    for options in attempts:
        try:
            program = torch.export.export(module, (example,), **options)
        except Exception as err:  # any tracing failure: try the next way
            errors.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            continue
        torch.export.save(program, str(out))
        return out, "torch.export" + ("" if options else " (static batch size)")
    traced_path = out.with_suffix(".pt")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, and here on purpose
        traced = torch.jit.trace(module, example)
        torch.jit.save(traced, str(traced_path))
    return traced_path, f"torchscript (torch.export failed: {errors[-1]})"
