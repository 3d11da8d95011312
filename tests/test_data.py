"""Tests for ktgraph.data: the bundled digits, fake CIFAR pickles and a fake Tiny ImageNet tree."""
from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ktgraph.data import DATASETS, build_data
from ktgraph.data.cifar import CIFAR10
from ktgraph.data.image_folder import IMAGENET_MEAN, IMAGENET_STD
from ktgraph.errors import GraphError


def make_spec(**fields: object) -> SimpleNamespace:
    """A data spec with plain defaults: no augmentation, no normalisation, no hold-out."""
    defaults = dict(
        name="digits",
        root=None,
        image_size=None,
        crop_padding=0,
        flip=False,
        normalize=False,
        val_split=0.0,
        limit_train=None,
        limit_test=None,
        num_classes=None,
    )
    return SimpleNamespace(**{**defaults, **fields})


def stack(dataset: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.tensor(labels)


def test_datasets_names() -> None:
    assert tuple(DATASETS) == ("digits", "cifar10", "cifar100", "image_folder")


# --- digits -----------------------------------------------------------------


def test_digits_sizes_shapes_and_classes() -> None:
    bundle = build_data(make_spec(), seed=0)
    assert len(bundle.train) + len(bundle.test) == 1797
    assert len(bundle.test) == 359
    assert bundle.val is None
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, 16)
    assert bundle.class_names == tuple(str(d) for d in range(10))
    image, label = bundle.train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert type(image) is torch.Tensor and isinstance(label, int)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])


def test_digits_test_split_does_not_depend_on_seed() -> None:
    first = build_data(make_spec(val_split=0.1), seed=0)
    second = build_data(make_spec(val_split=0.1), seed=7)
    for a, b in zip(stack(first.test), stack(second.test)):
        assert torch.equal(a, b)


def test_digits_image_size() -> None:
    bundle = build_data(make_spec(image_size=16), seed=0)
    assert bundle.image_size == 16
    assert bundle.train[0][0].shape == (3, 16, 16)


def test_digits_normalisation_uses_train_statistics() -> None:
    images, _ = stack(build_data(make_spec(normalize=True), seed=0).train)
    assert images.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert images.std().item() == pytest.approx(1.0, abs=1e-3)


def test_val_split_is_stratified_deterministic_and_disjoint() -> None:
    bundle = build_data(make_spec(val_split=0.2, crop_padding=4, flip=True), seed=3)
    assert len(bundle.val) == round(0.2 * 1438)
    assert len(bundle.train) + len(bundle.val) == 1438
    assert not set(bundle.train.indices.tolist()) & set(bundle.val.indices.tolist())
    per_class = torch.bincount(bundle.train.labels, minlength=10) + torch.bincount(bundle.val.labels, minlength=10)
    held = torch.bincount(bundle.val.labels, minlength=10)
    assert torch.all((held - 0.2 * per_class).abs() <= 1)

    again = build_data(make_spec(val_split=0.2), seed=3)
    other = build_data(make_spec(val_split=0.2), seed=4)
    assert torch.equal(again.val.indices, bundle.val.indices)
    assert not torch.equal(other.val.indices, bundle.val.indices)
    # Held-out images are not augmented.
    assert torch.equal(bundle.val[0][0], again.val[0][0])


def test_limits_keep_classes_balanced() -> None:
    bundle = build_data(make_spec(limit_train=100, limit_test=50, val_split=0.1), seed=0)
    assert len(bundle.train) + len(bundle.val) == 100 and len(bundle.val) == 10
    assert len(bundle.test) == 50
    assert torch.equal(torch.bincount(bundle.test.labels), torch.full((10,), 5))
    assert torch.equal(torch.bincount(torch.cat([bundle.train.labels, bundle.val.labels])), torch.full((10,), 10))


def test_augmentation_changes_pixels_not_labels_and_replays_from_seed() -> None:
    plain = build_data(make_spec(), seed=0).train
    augmented = build_data(make_spec(crop_padding=4, flip=True), seed=0).train
    torch.manual_seed(0)
    draws = [augmented[i] for i in range(20)]
    assert any(not torch.equal(image, plain[i][0]) for i, (image, _) in enumerate(draws))
    assert all(label == plain[i][1] for i, (_, label) in enumerate(draws))
    torch.manual_seed(0)
    assert all(torch.equal(augmented[i][0], image) for i, (image, _) in enumerate(draws))


def test_digits_flip_is_off_by_default() -> None:
    plain = build_data(make_spec(flip=False), seed=0).train[0][0]
    assert not torch.equal(plain, plain.flip(-1))
    default = build_data(make_spec(flip=None), seed=0).train
    torch.manual_seed(0)
    assert all(torch.equal(default[0][0], plain) for _ in range(10))


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"name": "mnist"}, ("data", "name")),
        ({"val_split": 1.0}, ("data", "val_split")),
        ({"limit_train": 0}, ("data", "limit_train")),
        ({"name": "cifar10"}, ("data", "root")),
    ],
)
def test_bad_spec_values_name_their_field(fields: dict, where: tuple[str, str]) -> None:
    with pytest.raises(GraphError) as caught:
        build_data(make_spec(**fields), seed=0)
    assert caught.value.where == where


# --- CIFAR ------------------------------------------------------------------


def _dump(path: Path, entry: dict) -> None:
    with path.open("wb") as stream:
        pickle.dump(entry, stream)


CIFAR_FORMATS = {
    "cifar10": SimpleNamespace(
        folder="cifar-10-batches-py",
        classes=10,
        train_files=[f"data_batch_{i}" for i in range(1, 6)],
        test_file="test_batch",
        label_key=b"labels",
        meta_file="batches.meta",
        names_key=b"label_names",
    ),
    "cifar100": SimpleNamespace(
        folder="cifar-100-python",
        classes=100,
        train_files=["train"],
        test_file="test",
        label_key=b"fine_labels",
        meta_file="meta",
        names_key=b"fine_label_names",
    ),
}


def write_cifar(root: Path, name: str) -> SimpleNamespace:
    """A tiny CIFAR folder in the real format (two images per class per file); returns what was written."""
    fmt = CIFAR_FORMATS[name]
    rng = np.random.default_rng(0)
    folder = root / fmt.folder
    folder.mkdir(parents=True)
    names = [f"class{i}" for i in range(fmt.classes)]
    _dump(folder / fmt.meta_file, {fmt.names_key: [n.encode() for n in names], b"num_cases_per_batch": 2})
    batches = []
    for file_name in [*fmt.train_files, fmt.test_file]:
        pixels = rng.integers(0, 256, (fmt.classes * 2, 3072), dtype=np.uint8)
        labels = rng.permutation(np.repeat(np.arange(fmt.classes), 2)).tolist()
        _dump(folder / file_name, {b"batch_label": file_name.encode(), b"data": pixels, fmt.label_key: labels})
        batches.append((pixels, labels))
    *train, test = batches
    return SimpleNamespace(
        train_pixels=np.concatenate([pixels for pixels, _ in train]),
        train_labels=[label for _, labels in train for label in labels],
        test_pixels=test[0],
        test_labels=test[1],
        names=names,
    )


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("use_parent", [True, False])
def test_cifar_round_trips_pixels_labels_and_names(tmp_path: Path, name: str, use_parent: bool) -> None:
    written = write_cifar(tmp_path, name)
    root = tmp_path if use_parent else tmp_path / CIFAR_FORMATS[name].folder
    bundle = build_data(make_spec(name=name, root=str(root)), seed=0)
    assert bundle.class_names == tuple(written.names) and bundle.num_classes == len(written.names)
    assert bundle.image_size == 32
    for dataset, pixels, labels in (
        (bundle.train, written.train_pixels, written.train_labels),
        (bundle.test, written.test_pixels, written.test_labels),
    ):
        images, got = stack(dataset)
        assert got.tolist() == labels
        expected = torch.from_numpy(pixels).reshape(-1, 3, 32, 32).float() / 255
        assert torch.allclose(images, expected)


def test_cifar10_normalisation_flip_default_and_resize(tmp_path: Path) -> None:
    written = write_cifar(tmp_path, "cifar10")
    raw = torch.from_numpy(written.train_pixels[0]).reshape(3, 32, 32).float() / 255
    normalized = build_data(make_spec(name="cifar10", root=str(tmp_path), normalize=True), seed=0).train[0][0]
    mean, std = torch.tensor(CIFAR10.mean).view(3, 1, 1), torch.tensor(CIFAR10.std).view(3, 1, 1)
    assert torch.allclose(normalized, (raw - mean) / std, atol=1e-5)

    flipping = build_data(make_spec(name="cifar10", root=str(tmp_path), flip=None), seed=0).train
    torch.manual_seed(0)
    assert any(torch.allclose(flipping[0][0], raw.flip(-1)) for _ in range(10))

    resized = build_data(make_spec(name="cifar10", root=str(tmp_path), image_size=40), seed=0)
    assert resized.image_size == 40 and resized.test[0][0].shape == (3, 40, 40)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_wrong_root_names_expected_layout(tmp_path: Path, name: str) -> None:
    (tmp_path / "something-else").mkdir()
    with pytest.raises(GraphError) as caught:
        build_data(make_spec(name=name, root=str(tmp_path)), seed=0)
    assert caught.value.where == ("data", "root")
    assert CIFAR_FORMATS[name].folder in str(caught.value)
    assert CIFAR_FORMATS[name].test_file in caught.value.expected


def test_cifar_corrupt_batch_is_a_graph_error(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(GraphError, match="data_batch_3"):
        build_data(make_spec(name="cifar10", root=str(tmp_path)), seed=0)


# --- image folders ----------------------------------------------------------

CLASSES = ("n02", "n01", "n03")  # deliberately unsorted: labels follow sorted names
LABELS = {wnid: label for label, wnid in enumerate(sorted(CLASSES))}


def _colour(label: int) -> tuple[int, int, int]:
    """A solid colour that identifies a class even after JPEG compression."""
    return (40 + 80 * label, 128, 200)


def _label_of(image: torch.Tensor) -> int:
    return round((image[0].mean().item() * 255 - 40) / 80)


def _save(path: Path, wnid: str, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), _colour(LABELS[wnid])).save(path)


def write_tiny_imagenet(root: Path, val_layout: str, test_folder: str = "val", size: int = 64) -> list[int]:
    """A Tiny-ImageNet-like tree; returns the labels of the test images in listing order."""
    for wnid in CLASSES:
        for k in range(3):
            _save(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", wnid, size)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    split = root / test_folder
    order = [wnid for _ in range(2) for wnid in reversed(CLASSES)]
    for i, wnid in enumerate(order):
        folder = "images" if val_layout == "annotations" else wnid
        _save(split / folder / f"val_{i}.png", wnid, size)
    if val_layout == "annotations":
        lines = [f"val_{i}.png\t{wnid}\t0\t0\t{size - 1}\t{size - 1}\n" for i, wnid in enumerate(order)]
        (split / "val_annotations.txt").write_text("".join(lines))
    return [LABELS[wnid] for wnid in order]


@pytest.mark.parametrize(
    ("val_layout", "test_folder"), [("annotations", "val"), ("folders", "val"), ("folders", "test")]
)
def test_image_folder_maps_classes_and_test_labels(tmp_path: Path, val_layout: str, test_folder: str) -> None:
    expected_test = write_tiny_imagenet(tmp_path, val_layout, test_folder)
    bundle = build_data(make_spec(name="image_folder", root=str(tmp_path)), seed=0)
    assert bundle.class_names == ("n01", "n02", "n03") and bundle.num_classes == 3
    assert bundle.image_size == 64
    images, labels = stack(bundle.train)
    assert images.shape == (9, 3, 64, 64)
    assert labels.tolist() == [_label_of(image) for image in images]
    images, labels = stack(bundle.test)
    assert sorted(labels.tolist()) == sorted(expected_test)
    assert labels.tolist() == [_label_of(image) for image in images]
    if val_layout == "annotations":
        assert labels.tolist() == expected_test


def test_image_folder_resizes_and_normalises(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path, "annotations")
    bundle = build_data(make_spec(name="image_folder", root=str(tmp_path), image_size=32, normalize=True), seed=0)
    assert bundle.image_size == 32
    image, label = bundle.test[0]
    assert image.shape == (3, 32, 32)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    expected = (torch.tensor(_colour(label)) / 255 - mean) / std
    assert torch.allclose(image.mean(dim=(1, 2)), expected, atol=1e-5)


def test_image_folder_native_size_must_match(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path, "annotations")
    Image.new("RGB", (48, 48)).save(tmp_path / "val" / "images" / "val_0.png")
    bundle = build_data(make_spec(name="image_folder", root=str(tmp_path)), seed=0)
    with pytest.raises(GraphError, match="48x48") as caught:
        bundle.test[0]
    assert caught.value.where == ("data", "image_size")


def test_image_folder_unknown_test_class(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path, "annotations")
    listing = tmp_path / "val" / "val_annotations.txt"
    listing.write_text(listing.read_text().replace("n03", "n09"))
    with pytest.raises(GraphError, match="n09") as caught:
        build_data(make_spec(name="image_folder", root=str(tmp_path)), seed=0)
    assert caught.value.where == ("data", "root")


def test_image_folder_unknown_test_folder(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path, "folders")
    (tmp_path / "val" / "n03").rename(tmp_path / "val" / "n07")
    with pytest.raises(GraphError, match="n07"):
        build_data(make_spec(name="image_folder", root=str(tmp_path)), seed=0)


def test_image_folder_missing_train_folder(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    with pytest.raises(GraphError, match="train/") as caught:
        build_data(make_spec(name="image_folder", root=str(tmp_path)), seed=0)
    assert caught.value.where == ("data", "root")
    assert "val_annotations.txt" in caught.value.expected


def test_crop_padding_defaults_to_an_eighth_of_the_side() -> None:
    """Unset, pad-and-crop shifts each image by at most size // 8 pixels (CIFAR's 4 at 32)."""
    plain = build_data(make_spec(crop_padding=0, normalize=False), seed=0).train
    padded = build_data(make_spec(crop_padding=None, normalize=False), seed=0).train
    limit = 16 // 8

    def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        canvas = torch.nn.functional.pad(image, (limit, limit, limit, limit))
        return canvas[:, limit + dy: limit + dy + 16, limit + dx: limit + dx + 16]

    torch.manual_seed(0)
    found = []
    for index in range(20):
        original, augmented = plain[index][0], padded[index][0]
        shifts = [(dy, dx) for dy in range(-limit, limit + 1) for dx in range(-limit, limit + 1)
                  if torch.allclose(shifted(original, dy, dx), augmented)]
        assert shifts, f"image {index} is not a shift of at most {limit} pixels"
        found.append(shifts)
    assert any((0, 0) not in shifts for shifts in found)
