"""What each dataset loader hands to :func:`ktgraph.data.build_data`.

Loaders only find and read the data; splitting, limiting and transforms are
shared, so every dataset behaves the same way for the same spec fields.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ktgraph.errors import GraphError


class Images(Protocol):
    """Indexable raw images: a uint8/float ``N x C x H x W`` tensor or a list of files."""

    def __getitem__(self, index: int) -> Any: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class RawData:
    """One dataset's unaugmented train and test examples plus its conventions.

    ``native_size`` is the side length the images already have (``None`` when
    they vary and must be resized); ``mean``/``std`` are the normalisation
    constants; ``default_flip`` is used when the spec leaves ``flip`` unset.
    """

    train_images: Images
    train_labels: torch.Tensor
    test_images: Images
    test_labels: torch.Tensor
    class_names: tuple[str, ...]
    native_size: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_flip: bool = True


def dataset_root(spec: Any, layout: str) -> Path:
    """The existing folder ``spec.root`` points to; ``layout`` describes what belongs there."""
    if spec.root is None:
        raise GraphError(
            f"dataset `{spec.name}` needs a root folder",
            where=("data", "root"),
            expected=layout,
            suggestion="set data.root to the folder holding the dataset files",
        )
    root = Path(spec.root).expanduser()
    if not root.is_dir():
        raise GraphError(f"folder `{root}` does not exist", where=("data", "root"), expected=layout)
    return root
