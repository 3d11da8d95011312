"""Accuracy of every network, path and aggregate on a data split, from one shared forward."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.utils.data import DataLoader, Dataset

from .executor import Executor
from .strategy import Local


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False) -> DataLoader:
    """A loader whose order depends only on ``seed`` (so a resumed epoch sees the same batches)."""
    return Local().loader(dataset, batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers,
                          drop_last=drop_last)


@torch.no_grad()
def evaluate(executor: Executor, batches: Iterable, device: torch.device, num_classes: int,
             strategy: Local | None = None) -> dict[str, dict]:
    """Top-1 (and top-5 when there are more than 10 classes) in percent, per plan output.

    With a distributed ``strategy`` each rank evaluates its shard and the counts are summed over
    ranks, so every rank returns the accuracy on the whole split.
    """
    model = executor.modules
    was_training = model.training
    model.eval()
    k = 5 if num_classes > 10 else 1
    nodes = list(executor.plan.outputs)
    counts = torch.zeros(len(nodes) + 1, 2, dtype=torch.long, device=device)  # the last row: samples seen
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        outputs = executor.outputs(executor.forward(images))
        for row, node in enumerate(nodes):
            hits = outputs[node].topk(k, dim=1).indices.eq(labels[:, None])
            counts[row] += torch.stack([hits[:, :1].any(1).sum(), hits.any(1).sum()])
        counts[-1] += labels.shape[0]
    model.train(was_training)
    if strategy is not None:
        counts = strategy.sum(counts)
    table = counts.tolist()
    total = table[-1][0]
    results = {}
    for node, (top1, top5) in zip(nodes, table):
        results[node] = {"top1": 100.0 * top1 / total}
        if k == 5:
            results[node]["top5"] = 100.0 * top5 / total
    return results
