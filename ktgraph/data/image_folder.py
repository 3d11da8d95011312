"""Any folder of class-labelled images, including Tiny ImageNet as distributed.

Train classes are the sorted folders of ``train/`` (images may sit deeper, as in
Tiny ImageNet's ``train/<wnid>/images/``). The test split is ``val/`` (or
``test/``), labelled either by class folders or by Tiny ImageNet's
``val_annotations.txt``; its labels are mapped through the train class names so
both splits agree.

An image file that cannot be read is found at start-up, where that is cheap (each file's header
is read): with ``data.on_bad_image: error`` (the default) it is an error naming the file, with
``skip`` it is left out with a warning and a count (every image is then decoded once at start-up,
so damaged pixel data is found too). A file that fails later, when its pixels are decoded, is an
error naming it.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, find_classes, make_dataset

from ktgraph.data.source import RawData, dataset_root
from ktgraph.errors import GraphError, did_you_mean

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ANNOTATIONS = "val_annotations.txt"
TEST_FOLDERS = ("val", "test")
LAYOUT = (
    "`train/<class>/.../<image>` and a labelled test split: `val/<class>/.../<image>`, "
    f"or `val/images/<image>` listed in `val/{ANNOTATIONS}` (Tiny ImageNet); `test/` may replace `val/`"
)

Samples = list[tuple[str, int]]
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # what PIL raises for a bad file


class BadImage(GraphError):
    """An image file that cannot be read; rebuilt intact when a DataLoader worker re-raises it."""

    _SAID = re.compile(r"`([^`\n]+)` cannot be read as an image: ([^\n]*)")

    def __init__(self, message: str, path: str | None = None, reason: str = "") -> None:
        if path is None:  # a DataLoader worker's re-raise passes the worker's whole traceback as the message
            found = self._SAID.search(message)
            path, reason = (found.group(1), found.group(2)) if found else ("an image", message.splitlines()[-1])
        super().__init__(f"`{path}` cannot be read as an image: {reason}", where=("data", "root"),
                         suggestion="replace or delete the file, or set data.on_bad_image: skip to leave out "
                                    "the images that cannot be read")


class ImageFiles:
    """RGB PIL images read on demand; with ``size`` set, each must be ``size x size``.

    The size check happens per image, on load, because opening every file up
    front would make start-up slow on large trees.
    """

    def __init__(self, paths: list[str], size: int | None) -> None:
        self.paths = paths
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:
        try:
            image = default_loader(self.paths[index])
        except IMAGE_ERRORS as err:
            raise BadImage("", self.paths[index], _reason(err)) from None
        if self.size is not None and image.size != (self.size, self.size):
            raise _size_error(self.paths[index], image.size, f"the first train image is {self.size}x{self.size}")
        return image


def load(spec: Any) -> RawData:
    """Train and test file lists; images keep their native size unless ``spec.image_size`` is set."""
    train_dir = _train_dir(spec)
    try:
        classes, class_to_idx = find_classes(train_dir)
        train = make_dataset(train_dir, class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:
        raise GraphError(str(err), where=("data", "root"), expected=LAYOUT) from err
    root = train_dir.parent
    policy = getattr(spec, "on_bad_image", "error")
    train = _readable(train, policy, "train")
    test = _readable(_test_samples(root, class_to_idx), policy, "test")
    native = None if spec.image_size else _square_size(train[0][0])
    return RawData(
        train_images=ImageFiles([path for path, _ in train], native),
        train_labels=torch.tensor([label for _, label in train]),
        test_images=ImageFiles([path for path, _ in test], native),
        test_labels=torch.tensor([label for _, label in test]),
        class_names=tuple(classes),
        native_size=native,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def count_classes(spec: Any) -> int:
    """The number of class folders in ``train/`` (a listing: no image is read)."""
    _need_root(spec, "num_classes")
    try:
        return len(find_classes(_train_dir(spec))[0])
    except FileNotFoundError as err:
        raise GraphError(str(err), where=("data", "root"), expected=LAYOUT) from err


def first_image_size(spec: Any) -> int:
    """The side of the first train image, which every image must have when ``image_size`` is unset."""
    _need_root(spec, "image_size")
    for folder, _, files in sorted(os.walk(_train_dir(spec))):
        for name in sorted(files):
            if name.lower().endswith(IMG_EXTENSIONS):
                return _square_size(os.path.join(folder, name))
    raise GraphError(f"no train images in `{_train_dir(spec)}`", where=("data", "root"), expected=LAYOUT)


def _readable(samples: Samples, policy: str, split: str) -> Samples:
    """The samples whose file opens as an image (decoded too with ``skip``); the others an error, or left out."""
    bad = [(path, reason) for path, _ in samples if (reason := _unreadable(path, decode=policy == "skip"))]
    if not bad:
        return samples
    if policy != "skip":
        error = BadImage("", *bad[0])
        if len(bad) > 1:
            error.message += f" (and {len(bad) - 1} more {split} image(s))"
        raise error
    warnings.warn(f"left out {len(bad)} of {len(samples)} {split} images that cannot be read "
                  f"(data.on_bad_image: skip), e.g. `{bad[0][0]}`: {bad[0][1]}", stacklevel=2)
    kept = [sample for sample in samples if sample[0] not in {path for path, _ in bad}]
    if not kept:
        raise GraphError(f"no {split} image can be read", where=("data", "root"), expected=LAYOUT)
    return kept


def _unreadable(path: str, *, decode: bool) -> str:
    """Why ``path`` cannot be read as an image ("" when it can); ``decode`` reads its pixels too."""
    try:
        with Image.open(path) as image:
            if decode:
                image.load()
    except IMAGE_ERRORS as err:
        return _reason(err)
    return ""


def _reason(err: Exception) -> str:
    if isinstance(err, UnidentifiedImageError):
        return "not an image format PIL recognises (damaged, empty or another kind of file)"
    text = getattr(err, "strerror", None) or (str(err).splitlines()[0] if str(err) else type(err).__name__)
    return str(text).replace("`", "'")


def _need_root(spec: Any, field: str) -> None:
    if spec.root is None:
        raise GraphError(f"the image folder's {field.replace('_', ' ')} is read from data.root, which is not set",
                         where=("data", "root"), expected=LAYOUT,
                         suggestion=f"set data.root, or data.{field} to plan and draw without the data")


def _train_dir(spec: Any) -> Path:
    root = dataset_root(spec, LAYOUT)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise GraphError(f"`{root}` has no `train/` folder", where=("data", "root"), expected=LAYOUT)
    return train_dir


def _test_samples(root: Path, class_to_idx: dict[str, int]) -> Samples:
    """Labelled samples of the first test folder found, in either supported layout."""
    split = next((root / name for name in TEST_FOLDERS if (root / name).is_dir()), None)
    if split is None:
        raise GraphError(f"`{root}` has no `val/` or `test/` folder", where=("data", "root"), expected=LAYOUT)
    if (split / ANNOTATIONS).is_file():
        samples = _annotated_samples(split, class_to_idx)
    else:
        for folder in sorted(p.name for p in split.iterdir() if p.is_dir()):
            if folder not in class_to_idx:
                raise _unknown_class(folder, f"`{split}/{folder}/`", class_to_idx)
        samples = make_dataset(split, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise GraphError(f"no test images found in `{split}`", where=("data", "root"), expected=LAYOUT)
    return samples


def _annotated_samples(split: Path, class_to_idx: dict[str, int]) -> Samples:
    """Samples listed in Tiny ImageNet's tab-separated ``filename, wnid, ...`` file."""
    listing = split / ANNOTATIONS
    samples = []
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise GraphError(
                f"`{listing}` line {number} is not `<filename>\\t<class>\\t...`",
                where=("data", "root"),
                expected=LAYOUT,
            )
        filename, name = fields[0].strip(), fields[1].strip()
        if name not in class_to_idx:
            raise _unknown_class(name, f"`{listing}` line {number}", class_to_idx)
        path = split / "images" / filename
        if not path.is_file():
            raise GraphError(
                f"`{path}` (listed in `{listing}`) does not exist", where=("data", "root"), expected=LAYOUT
            )
        samples.append((str(path), class_to_idx[name]))
    return samples


def _square_size(path: str) -> int:
    """The side of the (square) image at ``path``, the size every image must then have."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except IMAGE_ERRORS as err:
        raise BadImage("", path, _reason(err)) from None
    if width != height:
        raise _size_error(path, (width, height), "images must be square to keep their native size")
    return width


def _unknown_class(name: str, place: str, class_to_idx: dict[str, int]) -> GraphError:
    return GraphError(
        f"test class `{name}` ({place}) is not a folder of `train/`",
        where=("data", "root"),
        expected=f"test classes among the {len(class_to_idx)} train classes",
        suggestion=did_you_mean(name, class_to_idx),
    )


def _size_error(path: str, size: tuple[int, int], reason: str) -> GraphError:
    return GraphError(
        f"`{path}` is {size[0]}x{size[1]}: {reason}",
        where=("data", "image_size"),
        expected="all images the same square size when data.image_size is unset",
        suggestion="set data.image_size to resize every image",
    )
