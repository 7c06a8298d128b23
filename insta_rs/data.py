"""Data sets for randomized smoothing: every item is ``(x, y, idx)``.

- ``x``: a float32 tensor of shape (C, H, W) with values in [0, 1] (pixel space). No normalisation is
  applied here: the model's first layer computes (x - mean) / std, so Gaussian noise and certified
  radii are in pixel units (ALGORITHMS.md section 0, "Units"). A source only *exposes* mean and std,
  in ``DatasetInfo``.
- ``y``: the class, an int in [0, num_classes).
- ``idx``: the item's position in its split (an int in [0, len(split))), the key of per-example
  tables such as Insta-RS Train's sigma table and the ``idx`` column of ``certify.tsv``
  (ALGORITHMS.md sections 4 and 6). Splits are fixed functions of the settings, so the same
  ``idx`` names the same image in every run.

Sources (``DataSource`` subclasses; ``split(name, train_transform)`` gives an ``IndexedDataset``):

- ``Digits``: scikit-learn's embedded 8x8 digits (no download), stratified train/val/test split.
- ``MNIST`` and ``CIFAR10``: the official files read by torchvision's loaders; val is the last
  ``val_size`` images of the official training set, test is the official test set.
- ``ImageFolderData``: ``root/<split>/<class>/<image>`` trees (torchvision's ``ImageFolder``);
  ``ImageNet(root)`` is its preset for the ILSVRC-2012 layout.
- ``Synthetic``: seeded class prototypes plus Gaussian noise, any image shape, for tests.

``SmoothingDataModule`` turns a source into Lightning data loaders. Problems a user can fix raise
``DataError`` (files missing or in the wrong layout) or ``ConfigError`` (a bad setting), each with a
one-line message naming the setting, the value and what is expected. A setting is named by its argument
(``root=...``): the library knows no config paths; the entry points add the group (``dataset.root=...``).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import ConfigError, DataError, DataSettingError, check

__all__ = [
    "DatasetInfo", "IndexedDataset", "DataSource", "Digits", "MNIST", "CIFAR10", "ImageFolderData", "ImageNet",
    "Synthetic", "SmoothingDataModule", "SPLITS", "CIFAR10_MEAN", "CIFAR10_STD", "IMAGENET_MEAN", "IMAGENET_STD",
    "MNIST_MEAN", "MNIST_STD",
]

SPLITS = ("train", "val", "test")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTS = ("crop_flip", "random_resized_crop", "none")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the certification code need to know about a data set.

    ``input_shape`` is (C, H, W) of every ``x``; ``mean`` and ``std`` have one value per channel and
    are what the model's first layer normalises with; ``class_names[k]`` names class ``k`` when known.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None


# --------------------------------------------------------------------------------------------------
# Small helpers


def _one_line(text) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed to single spaces."""
    return " ".join(str(text).split())


def _shown_root(root: Path) -> str:
    """``root`` as the user gave it, followed by its absolute form when it was relative."""
    return str(root) if root.is_absolute() else f"{root} (resolved: {root.resolve()})"


def _as_int(value, setting: str, minimum: int) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum
    check(ok, setting, value, f"an integer >= {minimum}")
    return int(value)


def _as_fraction(value, setting: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= float(value) < 1.0
    check(ok, setting, value, "a number in [0, 1)")
    return float(value)


def _as_floats(values, setting: str, length: int | None = None, positive: bool = False) -> tuple[float, ...]:
    """A sequence of numbers (lists and OmegaConf ListConfigs included) as a tuple of floats."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    ok = bool(out) and (length is None or len(out) == length) and (not positive or min(out) > 0)
    what = f"{length} numbers, one per channel" if length else "a non-empty list of numbers, one per channel"
    check(ok, setting, values if not hasattr(values, "__iter__") else list(values),
          what + (", all > 0" if positive else ""))
    return out


def _uint8_to_float(image: torch.Tensor) -> torch.Tensor:
    """A uint8 (C, H, W) tensor as float32 in [0, 1] (v / 255)."""
    return image.to(torch.float32).div_(255.0)


def _pil_to_float(image) -> torch.Tensor:
    """A PIL image as a float32 (C, H, W) tensor in [0, 1]."""
    from torchvision.transforms.functional import pil_to_tensor

    return _uint8_to_float(pil_to_tensor(image))


def _stratified_split(labels: np.ndarray, n_held_out: int | float, seed: int, setting: str, value,
                      positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split ``positions`` (default: all of ``labels``) into (kept, held_out), stratified by label.

    ``n_held_out`` is a count or a fraction (scikit-learn's ``train_test_split`` semantics: a fraction
    ``f`` of ``n`` holds out ceil(f * n)); both parts are returned sorted, so an item's ``idx`` follows
    the order of the underlying data set. A fraction or count of 0 holds out nothing.
    """
    from sklearn.model_selection import train_test_split

    positions = np.arange(len(labels)) if positions is None else np.asarray(positions)
    if n_held_out == 0 or len(positions) == 0:
        return np.sort(positions), np.zeros(0, dtype=np.int64)
    try:
        kept, held = train_test_split(positions, test_size=n_held_out, stratify=labels[positions],
                                      random_state=seed, shuffle=True)
    except ValueError as err:
        counts = np.bincount(labels[positions])
        raise ConfigError(f"{setting}={value!r} is invalid: expected a value that holds out at least one item of "
                          f"each class and keeps at least one of each ({len(positions)} items, "
                          f"{int((counts > 0).sum())} classes, smallest class {int(counts[counts > 0].min())}; "
                          f"scikit-learn: {_one_line(err)})") from None
    return np.sort(kept), np.sort(held)


# --------------------------------------------------------------------------------------------------
# Datasets


class IndexedDataset(Dataset):
    """Wraps a data set of ``(x, y)`` pairs; item ``i`` is ``(x, int(y), i)``.

    ``targets`` (a list of int labels, or None) comes from the ``targets`` argument or else the wrapped
    data set's ``targets`` attribute; it lets per-class statistics skip loading images.
    """

    def __init__(self, dataset: Dataset, targets: Sequence[int] | None = None):
        self.dataset = dataset
        if targets is None:
            targets = getattr(dataset, "targets", None)
        self.targets = None if targets is None else [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for a split of {len(self)} items")
        x, y = self.dataset[index]
        return x, int(y), index


class _TensorImages(Dataset):
    """Images held in memory as one (N, C, H, W) tensor (uint8 0..255 or float in [0, 1]) with their labels.

    ``transform`` (applied to the uint8 or float (C, H, W) tensor before the conversion to float) is
    the training augmentation, or None.
    """

    def __init__(self, images: torch.Tensor, targets: Sequence[int], transform: Callable | None = None):
        self.images = images
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        if image.dtype == torch.uint8:
            image = _uint8_to_float(image)
        else:
            image = image.to(torch.float32)
        return image, self.targets[index]


class _FolderView(Dataset):
    """Items ``positions`` of a torchvision ``ImageFolder`` (PIL images), through ``transform`` to a float tensor."""

    def __init__(self, folder, positions: np.ndarray, transform: Callable, root_shown: str):
        self.folder = folder
        self.positions = [int(p) for p in positions]
        self.transform = transform
        self.root_shown = root_shown
        self.targets = [int(folder.targets[p]) for p in self.positions]

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int):
        path, label = self.folder.samples[self.positions[index]]
        try:
            image = self.folder.loader(path)
        except OSError as err:
            raise DataError(f"root={self.root_shown}: cannot read image {path}: {_one_line(err)}") from None
        return _pil_to_float(self.transform(image)), int(label)


# --------------------------------------------------------------------------------------------------
# Sources


class DataSource:
    """A data set with fixed train / val / test splits and a description (``info``).

    ``split(name, train_transform)`` returns the split as an ``IndexedDataset`` of ``(x, y, idx)``;
    ``train_transform=True`` applies the source's training augmentation (the same images otherwise).
    """

    info: DatasetInfo

    def split(self, name: str, train_transform: bool = False) -> IndexedDataset:
        check(name in SPLITS, "split", name, "one of train, val, test")
        return IndexedDataset(self._split(name, bool(train_transform)))

    def _split(self, name: str, train_transform: bool) -> Dataset:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self._split(s, False))}" for s in SPLITS)
        return f"{type(self).__name__}({self.info.name!r}, {sizes})"


class Digits(DataSource):
    """scikit-learn's embedded handwritten digits (``load_digits``): 1797 grey 8x8 images, 10 classes.

    Pixels are integers 0..16 in the source and become x = v / 16 in [0, 1]; ``input_shape`` (1, 8, 8).
    The split is stratified by class and fixed by ``split_seed`` (scikit-learn's ``train_test_split``
    with ``stratify`` and ``random_state=split_seed``): first test = ceil(test_fraction * 1797) images,
    then val = round(val_fraction * 1797) of the rest, train the remainder; each split keeps the
    images in their original order. With the defaults (0.1, 0.2): train 1257, val 180, test 360.
    ``mean`` / ``std`` are the pixel mean and standard deviation over all 1797 images (4 decimals).
    No training augmentation (flips and crops would change digits).
    """

    TOTAL = 1797

    def __init__(self, val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0):
        from sklearn.datasets import load_digits

        val_fraction = _as_fraction(val_fraction, "val_fraction")
        test_fraction = _as_fraction(test_fraction, "test_fraction")
        check(val_fraction + test_fraction < 1.0, "val_fraction", val_fraction,
              f"val_fraction + test_fraction < 1 (test_fraction={test_fraction})")
        split_seed = _as_int(split_seed, "split_seed", 0)
        bunch = load_digits()
        images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
        labels = np.asarray(bunch.target, dtype=np.int64)
        rest, test = _stratified_split(labels, test_fraction, split_seed, "test_fraction", test_fraction)
        n_val = int(round(val_fraction * len(labels)))
        train, val = _stratified_split(labels, n_val, split_seed, "val_fraction", val_fraction, rest)
        self.indices = {"train": train, "val": val, "test": test}
        self._images, self._labels = images, labels
        self.info = DatasetInfo(
            name="digits", num_classes=10, input_shape=(1, 8, 8),
            mean=(round(float(images.mean()), 4),), std=(round(float(images.std()), 4),),
            class_names=tuple(str(k) for k in range(10)),
        )

    def _split(self, name: str, train_transform: bool) -> Dataset:
        positions = torch.as_tensor(self.indices[name], dtype=torch.long)
        return _TensorImages(self._images[positions], self._labels[self.indices[name]])


class _ArraySource(DataSource):
    """A source whose official train and test sets are loaded into memory as uint8 tensors;
    val = the last ``val_size`` images of the official training set, train = the ones before."""

    def _set_arrays(self, train_images: torch.Tensor, train_labels, test_images: torch.Tensor, test_labels,
                    val_size: int) -> None:
        n = len(train_labels)
        check(val_size < n, "val_size", val_size, f"an integer in [0, {n}) (the training set has {n} images)")
        cut = n - val_size
        train_labels = [int(t) for t in train_labels]
        self._arrays = {
            "train": (train_images[:cut], train_labels[:cut]),
            "val": (train_images[cut:], train_labels[cut:]),
            "test": (test_images, [int(t) for t in test_labels]),
        }

    def _train_augmentation(self) -> Callable | None:
        return None

    def _split(self, name: str, train_transform: bool) -> Dataset:
        images, labels = self._arrays[name]
        return _TensorImages(images, labels, self._train_augmentation() if train_transform else None)


class MNIST(_ArraySource):
    """MNIST (LeCun et al.) through ``torchvision.datasets.MNIST``: 1x28x28 grey images, 10 classes.

    Files: ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (the uncompressed idx
    files; ``download=True`` fetches them). Splits: train = the first 60000 - val_size official
    training images, val = the last ``val_size`` (default 5000), test = the official 10000.
    Mean / std (0.1307, 0.3081); no training augmentation.
    """

    FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def __init__(self, root: str | os.PathLike, download: bool = False, val_size: int = 5000):
        import torchvision

        val_size = _as_int(val_size, "val_size", 0)
        root = Path(str(root)).expanduser()
        raw = root / "MNIST" / "raw"
        legacy = all((root / "MNIST" / "processed" / f).is_file() for f in ("training.pt", "test.pt"))
        missing = [f for f in self.FILES if not (raw / f).is_file()]
        expected = f"expected {root}/MNIST/raw/{', '.join(self.FILES)}"
        if missing and not legacy and download:
            _download(lambda: torchvision.datasets.MNIST(str(root), train=True, download=True), "MNIST", root,
                      expected)
            missing = [f for f in self.FILES if not (raw / f).is_file()]
        if missing and not legacy:
            found = "no MNIST files found" if len(missing) == len(self.FILES) else f"missing {', '.join(missing)}"
            hint = ""
            if all((root / f).is_file() or (root / "raw" / f).is_file() for f in self.FILES):
                hint = "; the files are there but one level too high: move them into MNIST/raw/"
            raise DataSettingError(f"root={_shown_root(root)}: {found}; {expected} (uncompressed idx files, "
                                   f"or set download=true){hint}")
        try:
            train = torchvision.datasets.MNIST(str(root), train=True)
            test = torchvision.datasets.MNIST(str(root), train=False)
        except Exception as err:  # malformed idx files: torchvision asserts / raises while parsing
            raise DataError(f"root={_shown_root(root)}: cannot read the MNIST idx files in {raw} "
                            f"({type(err).__name__}: {_one_line(err)}); {expected}") from None
        shapes = {tuple(d.data.shape[1:]) for d in (train, test)}
        if shapes != {(28, 28)} or len(train.data) != len(train.targets) or len(test.data) != len(test.targets):
            raise DataError(f"root={_shown_root(root)}: the MNIST files in {raw} hold images of shape "
                            f"{sorted(shapes)} or unequal image and label counts; expected 28x28 images, one label each")
        self._set_arrays(train.data.unsqueeze(1).contiguous(), train.targets.tolist(),
                         test.data.unsqueeze(1).contiguous(), test.targets.tolist(), val_size)
        self.info = DatasetInfo(name="mnist", num_classes=10, input_shape=(1, 28, 28), mean=MNIST_MEAN, std=MNIST_STD,
                                class_names=tuple(str(c) for c in train.classes))


def _cifar10_loader_class():
    """torchvision's CIFAR10 loader with its MD5 checks turned into presence checks, so any batch files
    in the official pickle format load (a subset, or the official ones); the format itself is still
    parsed by torchvision. ``download`` still verifies the archive's MD5."""
    import torchvision

    class _CIFAR10Files(torchvision.datasets.CIFAR10):
        train_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.train_list]
        test_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.test_list]
        meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}

    return _CIFAR10Files


def _download(fetch: Callable[[], object], what: str, root: Path, expected: str) -> None:
    """Run torchvision's download; any failure becomes a one-line DataError."""
    try:
        fetch()
    except Exception as err:
        raise DataError(f"download=true: downloading {what} into root={_shown_root(root)} failed "
                        f"({type(err).__name__}: {_one_line(err)[:300]}); fetch it elsewhere and copy it there: "
                        f"{expected}") from None


class CIFAR10(_ArraySource):
    """CIFAR-10 (Krizhevsky, 2009) through ``torchvision.datasets.CIFAR10``: 3x32x32 RGB, 10 classes.

    Files: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (the python
    pickle batches; ``download=True`` fetches them). Their presence and shapes are checked, not their
    MD5 sums. Splits: train = the first 50000 - val_size official training images, val = the last
    ``val_size`` (default 5000), test = the official 10000. Mean (0.4914, 0.4822, 0.4465), std
    (0.2470, 0.2435, 0.2616). Training augmentation (Cohen et al.): random 32x32 crop of the image
    zero-padded by 4 pixels, then a horizontal flip with probability 1/2.
    """

    FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
             "batches.meta")

    def __init__(self, root: str | os.PathLike, download: bool = False, val_size: int = 5000):
        val_size = _as_int(val_size, "val_size", 0)
        root = Path(str(root)).expanduser()
        base = root / "cifar-10-batches-py"
        loader = _cifar10_loader_class()
        expected = f"expected {base}/data_batch_1..5, test_batch, batches.meta"
        missing = [f for f in self.FILES if not (base / f).is_file()]
        if missing and download:
            _download(lambda: loader(str(root), train=True, download=True), "CIFAR-10", root, expected)
            missing = [f for f in self.FILES if not (base / f).is_file()]
        if missing:
            found = ("no CIFAR-10 batches found" if len(missing) == len(self.FILES)
                     else f"missing {', '.join(missing)}")
            hint = ""
            if all((root / f).is_file() for f in self.FILES):
                hint = f"; the batches are directly in {root}: set root={root.parent}"
            raise DataSettingError(f"root={_shown_root(root)}: {found}; {expected} (or set download=true)"
                                   f"{hint}")
        try:
            train = loader(str(root), train=True)
            test = loader(str(root), train=False)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, RuntimeError) as err:
            raise DataError(f"root={_shown_root(root)}: cannot read the CIFAR-10 batches in {base} "
                            f"({type(err).__name__}: {_one_line(err)}); expected python pickle batches with "
                            f"b'data' (uint8, N x 3072) and b'labels'") from None
        if len(train.classes) != 10:
            raise DataError(f"root={_shown_root(root)}: {base}/batches.meta names {len(train.classes)} "
                            "classes; expected the 10 CIFAR-10 label_names")
        for part in (train, test):
            if len(part.data) != len(part.targets):
                raise DataError(f"root={_shown_root(root)}: the CIFAR-10 batches in {base} hold "
                                f"{len(part.data)} images but {len(part.targets)} labels; expected one label each")

        def to_tensor(data: np.ndarray) -> torch.Tensor:  # torchvision keeps N x H x W x C
            return torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))

        self._set_arrays(to_tensor(train.data), train.targets, to_tensor(test.data), test.targets, val_size)
        self.info = DatasetInfo(name="cifar10", num_classes=10, input_shape=(3, 32, 32), mean=CIFAR10_MEAN,
                                std=CIFAR10_STD, class_names=tuple(str(c) for c in train.classes))

    def _train_augmentation(self) -> Callable:
        from torchvision import transforms as T

        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])


class _ResizeCenterCrop:
    """Resize the shorter side to ``resize`` (default ``size``), then centre-crop ``size`` x ``size``.

    An image that already is ``size`` x ``size`` with ``resize`` unset is passed through untouched.
    """

    def __init__(self, size: int, resize: int | None):
        self.size = size
        self.resize = resize or size

    def __call__(self, image):
        from torchvision.transforms import functional as F

        if min(image.size) != self.resize:
            image = F.resize(image, self.resize, antialias=True)
        if image.size != (self.size, self.size):
            image = F.center_crop(image, [self.size, self.size])
        return image

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(resize={self.resize}, size={self.size})"


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())


def _has_image(folder: Path, extensions: tuple[str, ...]) -> bool:
    for _, _, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(extensions) for f in files):
            return True
    return False


class ImageFolderData(DataSource):
    """Images in ``root/<train_dir>/<class>/<image>`` and ``root/<test_dir>/<class>/<image>`` (and
    optionally ``root/<val_dir>/...``), read by ``torchvision.datasets.ImageFolder`` as RGB.

    - Classes: the sorted class-folder names (``info.class_names``; class k is the k-th name); every
      split must have the same class folders, each holding at least one image.
    - Val: ``root/<val_dir>`` when given; otherwise a stratified ``val_fraction`` of the training
      images (ceil(val_fraction * N), scikit-learn's ``train_test_split`` with ``random_state=split_seed``)
      is held out. Each split keeps ImageFolder's order (classes, then sorted file names).
    - Evaluation images: the shorter side resized to ``resize`` (default ``image_size``, skipped when the
      image already is ``image_size`` square), then centre-cropped to ``image_size`` x ``image_size``.
    - Training augmentation ``augment``: ``crop_flip`` (the evaluation image, a random crop after
      zero-padding by image_size // 8 pixels, a horizontal flip with probability 1/2: CIFAR style),
      ``random_resized_crop`` (torchvision's ``RandomResizedCrop(image_size)`` with its default scale
      (0.08, 1) and ratio (3/4, 4/3), then a flip: ImageNet style) or ``none``.
    - ``mean`` / ``std``: three numbers each, given by the user (they are not estimated).
    """

    def __init__(self, root: str | os.PathLike, train_dir: str = "train", val_dir: str | None = None,
                 test_dir: str = "test", image_size: int = 32, resize: int | None = None,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                 val_fraction: float = 0.1, split_seed: int = 0, augment: str = "crop_flip",
                 name: str = "image_folder"):
        from torchvision.datasets.folder import IMG_EXTENSIONS

        image_size, resize, val_fraction, split_seed, mean, std = self._checked_settings(
            root, train_dir, val_dir, test_dir, image_size, resize, mean, std, val_fraction, split_seed, augment)
        root = Path(str(root)).expanduser()
        self.root, self.root_shown = root, _shown_root(root)
        layout = f"expected {root}/{train_dir}/<class>/<image> and {root}/{test_dir}/<class>/<image>"
        if not root.is_dir():
            raise DataSettingError(f"root={self.root_shown}: no such folder; {layout}")
        dirs = {"train": train_dir, "test": test_dir}
        if val_dir is not None:
            dirs["val"] = val_dir
        classes = self._classes_by_split(dirs, layout, tuple(IMG_EXTENSIONS))
        self._check_same_classes(dirs, classes)
        folders = self._image_folders(dirs, layout)
        self._parts = self._parts_by_split(folders, val_dir is None, val_fraction, split_seed)
        self.image_size, self.resize, self.augment = image_size, resize, augment
        self.info = DatasetInfo(name=str(name), num_classes=len(classes["train"]),
                                input_shape=(3, image_size, image_size), mean=mean, std=std,
                                class_names=tuple(classes["train"]))

    @staticmethod
    def _checked_settings(root, train_dir, val_dir, test_dir, image_size, resize, mean, std, val_fraction,
                          split_seed, augment) -> tuple:
        """The validated (image_size, resize, val_fraction, split_seed, mean, std); raises ConfigError for
        the first invalid setting."""
        check(root is not None and str(root) not in ("", "???"), "root", root,
              "the folder that holds <train_dir>/<class>/<image> and <test_dir>/<class>/<image>")
        image_size = _as_int(image_size, "image_size", 1)
        if resize is not None:
            resize = _as_int(resize, "resize", image_size)
        check(augment in AUGMENTS, "augment", augment, "one of " + ", ".join(AUGMENTS))
        val_fraction = _as_fraction(val_fraction, "val_fraction")
        split_seed = _as_int(split_seed, "split_seed", 0)
        mean = _as_floats(mean, "mean", 3)
        std = _as_floats(std, "std", 3, positive=True)
        for setting, value in (("train_dir", train_dir), ("test_dir", test_dir)):
            check(isinstance(value, str) and value != "", setting, value, "a folder name under root")
        check(val_dir is None or (isinstance(val_dir, str) and val_dir != ""), "val_dir", val_dir,
              "null (hold out val_fraction of the training images) or a folder name under root")
        return image_size, resize, val_fraction, split_seed, mean, std

    def _classes_by_split(self, dirs: dict[str, str], layout: str, extensions: tuple[str, ...]) -> dict[str, list[str]]:
        """{split: its sorted class-folder names}; raises DataError for a missing split folder, one without
        class folders, or a class folder without images."""
        classes: dict[str, list[str]] = {}
        for split, folder in dirs.items():
            path = self.root / folder
            if not path.is_dir():
                raise DataSettingError(f"{split}_dir={folder}: no folder {path} under root={self.root_shown}; "
                                       f"{layout}")
            classes[split] = _class_folders(path)
            if not classes[split]:
                raise DataSettingError(f"{split}_dir={folder}: {path} has no class folders; {layout}")
            empty = [c for c in classes[split] if not _has_image(path / c, extensions)]
            if empty:
                raise DataSettingError(f"{split}_dir={folder}: class folders without images in {path}: "
                                       f"{', '.join(empty)}; each class folder needs at least one "
                                       f"{'/'.join(extensions)} file")
        return classes

    def _check_same_classes(self, dirs: dict[str, str], classes: dict[str, list[str]]) -> None:
        """Raises DataError when a split's class folders differ from the train split's."""
        train_dir = dirs["train"]
        for split in dirs:
            if split != "train" and classes[split] != classes["train"]:
                only_train = sorted(set(classes["train"]) - set(classes[split]))
                only_other = sorted(set(classes[split]) - set(classes["train"]))
                raise DataSettingError(f"{split}_dir={dirs[split]}: its class folders differ from train_dir="
                                       f"{train_dir} under {self.root}: only in {train_dir}: "
                                       f"{only_train or 'none'}; only in {dirs[split]}: {only_other or 'none'}; every "
                                       f"split needs the same class folders")

    def _image_folders(self, dirs: dict[str, str], layout: str) -> dict:
        """{split: torchvision ImageFolder of its folder}; an unreadable folder raises DataError."""
        import torchvision

        try:
            return {split: torchvision.datasets.ImageFolder(str(self.root / folder)) for split, folder in dirs.items()}
        except (FileNotFoundError, OSError) as err:
            raise DataError(f"root={self.root_shown}: {_one_line(err)}; {layout}") from None

    @staticmethod
    def _parts_by_split(folders: dict, hold_out_val: bool, val_fraction: float, split_seed: int) -> dict:
        """{split: (ImageFolder, positions in it)}: val is a stratified hold-out of train when
        ``hold_out_val``, else its own folder."""
        train_labels = np.asarray(folders["train"].targets, dtype=np.int64)
        if hold_out_val:
            train_pos, val_pos = _stratified_split(train_labels, val_fraction, split_seed, "val_fraction",
                                                   val_fraction)
            parts = {"train": (folders["train"], train_pos), "val": (folders["train"], val_pos)}
        else:
            parts = {"train": (folders["train"], np.arange(len(train_labels))),
                     "val": (folders["val"], np.arange(len(folders["val"])))}
        parts["test"] = (folders["test"], np.arange(len(folders["test"])))
        return parts

    def eval_transform(self) -> Callable:
        """PIL image -> PIL image of image_size x image_size (resize the shorter side, centre-crop)."""
        return _ResizeCenterCrop(self.image_size, self.resize)

    def train_transform(self) -> Callable:
        """PIL image -> PIL image of image_size x image_size, with the ``augment`` augmentation."""
        from torchvision import transforms as T

        if self.augment == "crop_flip":
            return T.Compose([self.eval_transform(), T.RandomCrop(self.image_size, padding=max(1, self.image_size // 8)),
                              T.RandomHorizontalFlip()])
        if self.augment == "random_resized_crop":
            return T.Compose([T.RandomResizedCrop(self.image_size, antialias=True), T.RandomHorizontalFlip()])
        return self.eval_transform()

    def _split(self, name: str, train_transform: bool) -> Dataset:
        folder, positions = self._parts[name]
        transform = self.train_transform() if train_transform else self.eval_transform()
        return _FolderView(folder, positions, transform, self.root_shown)


def ImageNet(root: str | os.PathLike, train_dir: str = "train", test_dir: str = "val", val_dir: str | None = None,
             image_size: int = 224, resize: int | None = 256, val_fraction: float = 0.01, split_seed: int = 0,
             augment: str = "random_resized_crop") -> ImageFolderData:
    """ILSVRC-2012 in the usual ImageFolder layout: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``
    (the official validation images sorted into class folders) -- the latter is our *test* split, as
    in Cohen et al. Val: a stratified 1% of train (``val_fraction``). Evaluation: resize the shorter
    side to 256, centre-crop 224; training: RandomResizedCrop(224) + flip; ImageNet mean / std."""
    return ImageFolderData(root, train_dir=train_dir, val_dir=val_dir, test_dir=test_dir, image_size=image_size,
                           resize=resize, mean=IMAGENET_MEAN, std=IMAGENET_STD, val_fraction=val_fraction,
                           split_seed=split_seed, augment=augment, name="imagenet")


class Synthetic(DataSource):
    """A seeded, learnable toy data set of any image shape, for tests.

    Class k has a prototype p_k with pixels drawn uniformly from [0.2, 0.8]; an item of class k is
    x = clip(p_k + noise * e, 0, 1) with e ~ N(0, I). Labels are balanced (item i of a split has class
    i mod num_classes before a seeded shuffle). The prototypes and each split are drawn from their own
    streams of ``numpy.random.SeedSequence(seed)``, so a split depends only on ``seed``, its size and
    the shape. ``mean`` / ``std`` are the per-channel mean and standard deviation of the training split.
    """

    def __init__(self, num_classes: int = 3, input_shape: Sequence[int] = (1, 8, 8), train_size: int = 256,
                 val_size: int = 64, test_size: int = 64, seed: int = 0, noise: float = 0.1):
        num_classes = _as_int(num_classes, "num_classes", 2)
        try:
            shape = tuple(int(v) for v in input_shape)
            ok = len(shape) == 3 and min(shape) >= 1 and all(int(v) == v for v in input_shape)
        except (TypeError, ValueError):
            shape, ok = (), False
        check(ok, "input_shape", input_shape if not hasattr(input_shape, "__iter__") else list(input_shape),
              "(channels, height, width), three positive integers")
        sizes = {"train": _as_int(train_size, "train_size", 1),
                 "val": _as_int(val_size, "val_size", 0),
                 "test": _as_int(test_size, "test_size", 0)}
        seed = _as_int(seed, "seed", 0)
        check(isinstance(noise, (int, float)) and not isinstance(noise, bool) and noise >= 0, "noise", noise,
              "a number >= 0")
        streams = np.random.SeedSequence(seed).spawn(1 + len(SPLITS))
        self.prototypes = np.random.default_rng(streams[0]).uniform(0.2, 0.8, size=(num_classes, *shape))
        self._data = {}
        for stream, split in zip(streams[1:], SPLITS):
            rng = np.random.default_rng(stream)
            n = sizes[split]
            labels = np.arange(n) % num_classes
            rng.shuffle(labels)
            x = self.prototypes[labels] + float(noise) * rng.standard_normal((n, *shape))
            self._data[split] = (torch.from_numpy(np.clip(x, 0.0, 1.0).astype(np.float32)), labels.tolist())
        train_x = self._data["train"][0].transpose(0, 1).reshape(shape[0], -1)
        std = train_x.std(dim=1) if train_x.shape[1] > 1 else torch.ones(shape[0])
        self.info = DatasetInfo(
            name="synthetic", num_classes=num_classes, input_shape=shape,
            mean=tuple(round(float(m), 6) for m in train_x.mean(dim=1)),
            std=tuple(max(round(float(s), 6), 1e-3) for s in std),
            class_names=tuple(f"class_{k}" for k in range(num_classes)),
        )

    def _split(self, name: str, train_transform: bool) -> Dataset:
        images, labels = self._data[name]
        return _TensorImages(images, labels)


# --------------------------------------------------------------------------------------------------
# Lightning


class SmoothingDataModule(pl.LightningDataModule):
    """Lightning data loaders over a ``DataSource``; batches are ``(x, y, idx)`` tensors.

    ``train_dataloader``: the train split with the training augmentation, reshuffled every epoch
    (from torch's global generator, which ``seed_everything`` fixes), last partial batch kept.
    ``val_dataloader``: in order, ``eval_batch_size`` (default ``batch_size``).
    Under DDP, Lightning inserts a ``DistributedSampler``.
    """

    def __init__(self, source: DataSource, batch_size: int = 64, num_workers: int = 0,
                 eval_batch_size: int | None = None):
        super().__init__()
        self.source = source
        self.batch_size = _as_int(batch_size, "batch_size", 1)
        self.num_workers = _as_int(num_workers, "num_workers", 0)
        self.eval_batch_size = (self.batch_size if eval_batch_size is None
                                else _as_int(eval_batch_size, "eval_batch_size", 1))
        self._datasets: dict[tuple[str, bool], IndexedDataset] = {}

    @property
    def info(self) -> DatasetInfo:
        return self.source.info

    def dataset(self, name: str, train_transform: bool = False) -> IndexedDataset:
        """The split ``name`` (cached)."""
        key = (name, bool(train_transform))
        if key not in self._datasets:
            self._datasets[key] = self.source.split(name, train_transform=train_transform)
        return self._datasets[key]

    def _loader(self, dataset: IndexedDataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train", train_transform=True), self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.eval_batch_size, shuffle=False)
