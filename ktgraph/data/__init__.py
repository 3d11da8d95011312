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
from ktgraph.errors import GraphError
from ktgraph.registry import Registry

__all__ = ["DATASETS", "DataBundle", "DataInfo", "LabelledView", "build_data", "data_info", "find_data",
           "register_dataset"]

Loader = Callable[[Any], RawData]
DATASETS: Registry[Loader] = Registry("dataset")
"""Loaders ``fn(settings) -> RawData``, with metadata ``num_classes`` and ``image_size``: numbers, or
functions of the settings that find them without reading the images (a folder listing); and
``find``, which checks that the files are there without reading them (``ktgraph validate``)."""
register_dataset = DATASETS.register
register_dataset(name="digits", num_classes=10, image_size=digits.DEFAULT_SIZE,
                 description="scikit-learn's 8x8 handwritten digits, bundled (offline)")(digits.load)
register_dataset(name="cifar10", num_classes=10, image_size=cifar.SIZE, find=cifar.find_cifar10,
                 description="CIFAR-10, from the python-pickle folder at data.root")(cifar.load_cifar10)
register_dataset(name="cifar100", num_classes=100, image_size=cifar.SIZE, find=cifar.find_cifar100,
                 description="CIFAR-100 (fine labels), from the python-pickle folder at data.root")(cifar.load_cifar100)
register_dataset(name="image_folder", num_classes=image_folder.count_classes,
                 image_size=image_folder.first_image_size, find=image_folder.count_classes,
                 description="class folders under data.root/train and a labelled val/ (Tiny ImageNet's layout)")(
    image_folder.load)


@dataclass(frozen=True)
class DataInfo:
    """What models need to know about the data: enough to build and compile without loading it."""

    num_classes: int
    in_channels: int
    image_size: int


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
    train_plain: Dataset | None = None  # the train split without augmentation (BatchNorm calibration)

    @property
    def info(self) -> DataInfo:
        return DataInfo(self.num_classes, self.in_channels, self.image_size)


def find_data(spec: Any) -> None:
    """Check that the data's files are where the settings say (a GraphError naming the field if not)."""
    _check(spec)
    find = DATASETS.metadata(spec.name).get("find")
    if find is not None:
        find(spec)


def data_info(spec: Any) -> DataInfo:
    """The data's classes, channels and side, from ``data.num_classes``/``data.image_size`` when the
    file gives them, else from the data set's registration (no image is loaded)."""
    _check(spec)
    meta = DATASETS.metadata(spec.name)

    def value(field: str) -> int:
        given = getattr(spec, field)
        if given is not None:
            return int(given)
        found = meta[field]
        return int(found(spec) if callable(found) else found)

    return DataInfo(num_classes=value("num_classes"), in_channels=3, image_size=value("image_size"))


def build_data(spec: Any, seed: int, dtype: torch.dtype = torch.float32) -> DataBundle:
    """Load the dataset ``spec`` names, its images as ``dtype``; ``seed`` only decides the validation hold-out."""
    _check(spec)
    raw = DATASETS[spec.name](spec)
    if spec.num_classes is not None and spec.num_classes != len(raw.class_names):
        raise GraphError(f"data.num_classes is {spec.num_classes} but the data has {len(raw.class_names)} classes",
                         where=("data", "num_classes"), suggestion=f"set num_classes: {len(raw.class_names)} "
                         "or leave it out (it is read from the data)")
    size = spec.image_size or raw.native_size
    resize = size != raw.native_size
    mean, std = (raw.mean, raw.std) if spec.normalize else (None, None)
    flip = raw.default_flip if spec.flip is None else spec.flip
    # Unset, the pad-and-crop shift is 1/8 of the image side: CIFAR's 4 pixels at 32.
    padding = size // 8 if spec.crop_padding is None else spec.crop_padding
    augmented = image_pipeline(size, resize=resize, crop_padding=padding, flip=flip, mean=mean, std=std, dtype=dtype)
    plain = image_pipeline(size, resize=resize, mean=mean, std=std, dtype=dtype)

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
        train_plain=LabelledView(raw.train_images, raw.train_labels, pool[kept], plain),
    )


def _limited(labels: torch.Tensor, limit: int | None) -> torch.Tensor:
    return torch.arange(len(labels)) if limit is None else balanced_prefix(labels, limit)


def _check(spec: Any) -> None:
    """Reject values the loaders cannot honour, naming the field."""
    DATASETS.get(spec.name, where=("data", "name"))
    if not 0 <= spec.val_split < 1:
        raise GraphError(
            f"val_split {spec.val_split} is out of range", where=("data", "val_split"), expected="0 <= val_split < 1"
        )
    if spec.crop_padding is not None and spec.crop_padding < 0:
        raise GraphError(
            f"crop_padding {spec.crop_padding} is negative", where=("data", "crop_padding"), expected="an integer >= 0"
        )
    for field in ("image_size", "limit_train", "limit_test", "num_classes"):
        value = getattr(spec, field)
        if value is not None and value < 1:
            raise GraphError(
                f"{field} {value} is not positive", where=("data", field), expected="an integer >= 1, or null"
            )
