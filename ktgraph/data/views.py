"""A dataset that is a subset of raw images seen through one transform.

Train and validation share the same raw images but need different transforms
(augmented vs. not), so subsets carry their own transform instead of the source.
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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[int(self.indices[index])]), int(self.labels[index])
