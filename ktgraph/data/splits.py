"""Deterministic, class-balanced index selections (validation hold-out, quick-run limits)."""
from __future__ import annotations

import torch


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices ``(kept, held_out)`` with ``fraction`` of every class held out.

    The total held out is ``round(fraction * n)`` (at least one, never all), shared
    among classes by largest remainder so each class keeps its proportion; which
    examples go is a pure function of ``seed``, so runs are reproducible.
    """
    n = len(labels)
    total = min(max(round(fraction * n), 1), n - 1) if fraction > 0 else 0
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts * total // n
    spare = total - int(quota.sum())
    quota[torch.argsort(counts * total % n, descending=True, stable=True)[:spare]] += 1
    generator = torch.Generator().manual_seed(seed)
    held = torch.zeros(n, dtype=torch.bool)
    for cls, count in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        held[members[torch.randperm(len(members), generator=generator)[:count]]] = True
    return torch.nonzero(~held).flatten(), torch.nonzero(held).flatten()


def balanced_prefix(labels: torch.Tensor, limit: int) -> torch.Tensor:
    """Sorted indices of the first ``limit`` examples taken round-robin over classes.

    Taking every class's first example, then every class's second, ... keeps small
    quick-run subsets class-balanced without any randomness.
    """
    order = torch.argsort(labels, stable=True)
    grouped = labels[order]
    counts = torch.bincount(grouped)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(labels)) - starts[grouped]
    chosen = order[torch.argsort(rank * len(counts) + grouped, stable=True)[:limit]]
    return torch.sort(chosen).values
