"""Accuracy of every network, path and aggregate on a data split, from one shared forward."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.utils.data import DataLoader, Dataset

from .executor import Executor


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False) -> DataLoader:
    """A loader whose order depends only on ``seed`` (so a resumed epoch sees the same batches)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, drop_last=drop_last)


@torch.no_grad()
def evaluate(executor: Executor, batches: Iterable, device: torch.device, num_classes: int) -> dict[str, dict]:
    """Top-1 (and top-5 when there are more than 10 classes) in percent, per plan output."""
    model = executor.modules
    was_training = model.training
    model.eval()
    k = 5 if num_classes > 10 else 1
    correct: dict[str, torch.Tensor] = {}
    total = 0
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        outputs = executor.outputs(executor.forward(images))
        for node, logits in outputs.items():
            top = logits.topk(k, dim=1).indices
            hits = top.eq(labels[:, None])
            counts = torch.stack([hits[:, :1].any(1).sum(), hits.any(1).sum()])
            correct[node] = correct.get(node, 0) + counts
        total += labels.shape[0]
    model.train(was_training)
    results = {}
    for node, counts in correct.items():
        results[node] = {"top1": 100.0 * counts[0].item() / total}
        if k == 5:
            results[node]["top5"] = 100.0 * counts[1].item() / total
    return results
