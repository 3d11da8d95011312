"""A dataset that is a subset of raw images seen through one transform.

Train and validation share the same raw images but need different transforms
(augmented vs. not), so subsets carry their own transform instead of the source. The
trainer asks for each training example with a seed of its own, so its augmentation does not
depend on how many processes or loader workers share the epoch.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from ktgraph.data.source import Images


class LabelledView(Dataset):
    """Examples ``images[indices[i]]`` passed through ``transform``, with int labels."""

    def __init__(
        self,
        images: Images,
        labels: torch.Tensor,
        indices: torch.Tensor,
        transform: Callable[[Any], torch.Tensor],
    ) -> None:
        self.images = images
        self.indices = indices
        self.labels = labels[indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Example ``key``, or ``(index, seed)``: the example with its random augmentation drawn from
        ``seed`` alone, whichever process or worker loads it (``runtime/strategy.py``)."""
        if isinstance(key, tuple):
            index, seed = key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self._example(int(index))
        return self._example(int(key))

    def _example(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[int(self.indices[index])]), int(self.labels[index])
