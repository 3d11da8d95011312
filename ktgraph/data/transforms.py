"""The one image pipeline every dataset uses, built from torchvision.transforms.v2.

The random steps draw from torch's RNG, which the trainer seeds per example
(``data/views.py``), so an epoch's augmentation is the same again on resume.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2


def image_pipeline(
    size: int,
    *,
    resize: bool,
    crop_padding: int = 0,
    flip: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    dtype: torch.dtype = torch.float32,
) -> v2.Compose:
    """PIL image or ``C x H x W`` tensor -> ``C x size x size`` tensor of ``dtype`` (float32 by default).

    ``resize`` scales the short side to ``size`` and centre-crops to a square;
    ``crop_padding`` > 0 adds a zero-padded random crop, ``flip`` a random
    horizontal flip; ``mean``/``std`` (if given) normalise per channel.
    """
    steps: list[v2.Transform] = [v2.ToImage()]
    if resize:
        steps += [v2.Resize(size), v2.CenterCrop(size)]
    if crop_padding:
        steps.append(v2.RandomCrop(size, padding=crop_padding))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToDtype(dtype, scale=True))
    if mean is not None and std is not None:
        steps.append(v2.Normalize(list(mean), list(std)))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)
