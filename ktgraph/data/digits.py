"""scikit-learn's 8x8 digits: the offline default, small enough to hold in memory."""
from __future__ import annotations

from typing import Any

import torch
from sklearn.datasets import load_digits
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ktgraph.data.source import RawData
from ktgraph.data.splits import stratified_split

DEFAULT_SIZE = 16  # the 8x8 originals hold no more detail; 16 keeps CIFAR ResNets' stages meaningful
TEST_FRACTION = 0.2
# Fixed so the test set is the same for every run seed.
SPLIT_SEED = 0
_MAX_VALUE = 16.0


def load(spec: Any) -> RawData:
    """Upscaled (16x16 unless ``image_size`` says otherwise) 3-channel digits in [0, 1], split 80/20 by class, normalised with train statistics."""
    digits = load_digits()
    size = spec.image_size or DEFAULT_SIZE
    pixels = torch.from_numpy(digits.images).float().div(_MAX_VALUE).unsqueeze(1)
    pixels = F.resize(pixels, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    images = pixels.repeat(1, 3, 1, 1)
    labels = torch.from_numpy(digits.target).long()
    train, test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    mean, std = pixels[train].mean().item(), pixels[train].std().item()
    return RawData(
        train_images=images[train],
        train_labels=labels[train],
        test_images=images[test],
        test_labels=labels[test],
        class_names=tuple(str(name) for name in digits.target_names),
        native_size=size,
        mean=(mean,) * 3,
        std=(std,) * 3,
        default_flip=False,
    )
