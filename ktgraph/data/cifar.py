"""CIFAR-10 / CIFAR-100 read from the standard python-pickle folders.

torchvision's CIFAR classes refuse any folder whose files fail their md5 check,
even with ``download=False``, so they cannot read subsets or re-pickled copies;
the format is a few pickled dicts, so we read it directly. A pickle can name any
function to call while it is loaded; these are read with an unpickler that builds
only what CIFAR files hold (dicts, lists, strings, numbers and numpy arrays), so a
tampered file is an error, never code that runs.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ktgraph.data.source import RawData, dataset_root
from ktgraph.errors import GraphError

SIZE = 32
# The only globals CIFAR pickles name (numpy arrays, dtypes and scalars; bytes in protocol-2 pickles).
PLAIN_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
    ("_codecs", "encode"),
})


class PlainUnpickler(pickle.Unpickler):
    """Refuses every global but the few that build plain values (:data:`PLAIN_GLOBALS`)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in PLAIN_GLOBALS:
            raise pickle.UnpicklingError(f"it names `{module}.{name}`, which no CIFAR file holds (it may have "
                                         "been tampered with; nothing in it was run)")
        return super().find_class(module, name)


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches, labels and class names."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)

    @property
    def expected(self) -> str:
        return f"a `{self.folder}/` folder (or its parent) holding {', '.join(self.files)}"


CIFAR10 = CifarLayout(
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarLayout(
    title="CIFAR-100",
    folder="cifar-100-python",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)


def load_cifar10(spec: Any) -> RawData:
    """CIFAR-10 with its standard per-channel mean/std."""
    return load(spec, CIFAR10)


def load_cifar100(spec: Any) -> RawData:
    """CIFAR-100 with fine (100-class) labels and its standard per-channel mean/std."""
    return load(spec, CIFAR100)


def find_cifar10(spec: Any) -> None:
    """Check that the CIFAR-10 files are where ``data.root`` says, without reading them."""
    _find_folder(dataset_root(spec, CIFAR10.expected), CIFAR10)


def find_cifar100(spec: Any) -> None:
    """Check that the CIFAR-100 files are where ``data.root`` says, without reading them."""
    _find_folder(dataset_root(spec, CIFAR100.expected), CIFAR100)


def load(spec: Any, layout: CifarLayout) -> RawData:
    """All of one CIFAR variant as uint8 ``N x 3 x 32 x 32`` tensors."""
    folder = _find_folder(dataset_root(spec, layout.expected), layout)
    meta = _read_pickle(folder / layout.meta_file, layout)
    if layout.names_key not in meta:
        raise _format_error(folder / layout.meta_file, layout, f"it has no `{layout.names_key}` entry")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout.names_key])
    train_images, train_labels = _read_batches([folder / name for name in layout.train_files], layout, len(names))
    test_images, test_labels = _read_batches([folder / layout.test_file], layout, len(names))
    return RawData(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        class_names=names,
        native_size=SIZE,
        mean=layout.mean,
        std=layout.std,
    )


def _find_folder(root: Path, layout: CifarLayout) -> Path:
    """``root`` itself or its ``layout.folder`` child, whichever holds all the files."""
    for folder in (root / layout.folder, root):
        if all((folder / name).is_file() for name in layout.files):
            return folder
    raise GraphError(
        f"no {layout.title} files found in `{root}`",
        where=("data", "root"),
        expected=layout.expected,
        suggestion=f"extract the python version of {layout.title} and point data.root at it",
    )


def _read_batches(paths: list[Path], layout: CifarLayout, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of the given batch files, concatenated in order."""
    images, labels = [], []
    for path in paths:
        entry = _read_pickle(path, layout)
        try:
            pixels = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, SIZE, SIZE)
            targets = np.asarray(entry[layout.label_key], dtype=np.int64)
        except (KeyError, ValueError) as err:
            raise _format_error(path, layout, f"expected `data` (N x 3072 uint8) and `{layout.label_key}`") from err
        if len(pixels) != len(targets) or not len(targets):
            raise _format_error(path, layout, f"it holds {len(pixels)} images and {len(targets)} labels")
        if targets.min() < 0 or targets.max() >= num_classes:
            raise _format_error(path, layout, f"labels fall outside 0..{num_classes - 1}")
        images.append(torch.from_numpy(pixels))
        labels.append(torch.from_numpy(targets))
    return torch.cat(images), torch.cat(labels)


def _read_pickle(path: Path, layout: CifarLayout) -> dict[str, Any]:
    """A pickled dict with its keys as ``str`` (the originals are Python 2 byte strings)."""
    try:
        with path.open("rb") as stream:
            entry = PlainUnpickler(stream, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        refused = str(err) if str(err).startswith("it names") else "it cannot be unpickled"
        raise _format_error(path, layout, refused) from None
    except Exception as err:  # a corrupt pickle can fail in many ways; all mean the same to the user
        raise _format_error(path, layout, "it cannot be unpickled") from err
    if not isinstance(entry, dict):
        raise _format_error(path, layout, "it does not hold a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _format_error(path: Path, layout: CifarLayout, problem: str) -> GraphError:
    return GraphError(
        f"`{path}` is not a {layout.title} python-pickle file: {problem}",
        where=("data", "root"),
        expected=layout.expected,
    )
