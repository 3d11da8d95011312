"""What a whole-batch computation needs from the other processes of a distributed run.

KDCL-Linear solves for its weights on the whole batch, and KDCL-General estimates a covariance on
the whole held-out split: under ``torch.distributed`` each process holds only its shard, so these
helpers gather (or sum) across ranks. Gathered tensors carry no gradient: units compute their
weights from them and apply the weights to their local, differentiable tensors. In a single
process every helper returns its input unchanged.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(*tensors: Tensor) -> list[Tensor]:
    """Every rank's rows (first dimension) of each tensor, concatenated in rank order, detached.

    Ranks may hold different numbers of rows (the last batch): rows are padded to the largest
    count for ``all_gather`` and the padding is dropped.
    """
    if not distributed():
        return [t.detach() for t in tensors]
    world = dist.get_world_size()
    count = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    out = []
    for t in tensors:
        padded = t.detach().new_zeros((max(sizes), *t.shape[1:]))
        padded[: t.shape[0]] = t.detach()
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([part[:size] for part, size in zip(parts, sizes)]))
    return out


def sum_over_ranks(t: Tensor) -> Tensor:
    """``t`` summed over every rank (a copy; the input is left alone)."""
    total = t.detach().clone()
    if distributed():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total
