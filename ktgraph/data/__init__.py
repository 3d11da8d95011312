"""Datasets for distillation runs: load, split, limit and augment from one spec.

Every dataset goes through the same steps so a spec field means the same thing
for all of them: ``limit_train`` picks a class-balanced prefix of the train
split, ``val_split`` then holds out a stratified fraction of that (chosen from
``seed``), and ``limit_test`` picks a class-balanced prefix of the test split.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from ktgraph.data import cifar, digits, image_folder
from ktgraph.data.source import RawData
from ktgraph.data.splits import balanced_prefix, stratified_split
from ktgraph.data.transforms import image_pipeline
from ktgraph.data.views import LabelledView
from ktgraph.errors import GraphError, unknown_name

__all__ = ["DATASETS", "DataBundle", "LabelledView", "build_data"]

_LOADERS: dict[str, Callable[[Any], RawData]] = {
    "digits": digits.load,
    "cifar10": cifar.load_cifar10,
    "cifar100": cifar.load_cifar100,
    "image_folder": image_folder.load,
}
DATASETS: tuple[str, ...] = tuple(_LOADERS)


@dataclass(frozen=True)
class DataBundle:
    """The splits of one dataset, ready for a DataLoader, and what models need to know about them."""

    train: Dataset
    val: Dataset | None
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    class_names: tuple[str, ...]


def build_data(spec: Any, seed: int) -> DataBundle:
    """Load the dataset ``spec`` names; ``seed`` only decides the validation hold-out."""
    _check(spec)
    raw = _LOADERS[spec.name](spec)
    size = spec.image_size or raw.native_size
    resize = size != raw.native_size
    mean, std = (raw.mean, raw.std) if spec.normalize else (None, None)
    flip = raw.default_flip if spec.flip is None else spec.flip
    # Unset, the pad-and-crop shift is 1/8 of the image side: CIFAR's 4 pixels at 32.
    padding = size // 8 if spec.crop_padding is None else spec.crop_padding
    augmented = image_pipeline(size, resize=resize, crop_padding=padding, flip=flip, mean=mean, std=std)
    plain = image_pipeline(size, resize=resize, mean=mean, std=std)

    pool = _limited(raw.train_labels, spec.limit_train)
    kept, held = stratified_split(raw.train_labels[pool], spec.val_split, seed)
    return DataBundle(
        train=LabelledView(raw.train_images, raw.train_labels, pool[kept], augmented),
        val=LabelledView(raw.train_images, raw.train_labels, pool[held], plain) if len(held) else None,
        test=LabelledView(raw.test_images, raw.test_labels, _limited(raw.test_labels, spec.limit_test), plain),
        num_classes=len(raw.class_names),
        in_channels=3,
        image_size=size,
        class_names=raw.class_names,
    )


def _limited(labels: torch.Tensor, limit: int | None) -> torch.Tensor:
    return torch.arange(len(labels)) if limit is None else balanced_prefix(labels, limit)


def _check(spec: Any) -> None:
    """Reject values the loaders cannot honour, naming the field."""
    if spec.name not in _LOADERS:
        raise unknown_name("dataset", spec.name, DATASETS, where=("data", "name"))
    if not 0 <= spec.val_split < 1:
        raise GraphError(
            f"val_split {spec.val_split} is out of range", where=("data", "val_split"), expected="0 <= val_split < 1"
        )
    if spec.crop_padding is not None and spec.crop_padding < 0:
        raise GraphError(
            f"crop_padding {spec.crop_padding} is negative", where=("data", "crop_padding"), expected="an integer >= 0"
        )
    for field in ("image_size", "limit_train", "limit_test"):
        value = getattr(spec, field)
        if value is not None and value < 1:
            raise GraphError(
                f"{field} {value} is not positive", where=("data", field), expected="an integer >= 1, or null"
            )
