"""Writers of tiny data sets in the real on-disk formats (CIFAR-10 python batches, MNIST idx files,
ImageFolder trees), written from the format specifications, not through the loaders under test."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Py2Pickler(pickle._Pickler):
    """Pickles ``bytes`` as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING opcodes), as in the official
    CIFAR-10 batches, which were written by Python 2: loaded with ``encoding="bytes"`` their keys are
    b'data', b'labels'; with ``encoding="latin1"`` (torchvision) they are 'data', 'labels'."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _dump_py2(obj, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, seed: int = 0) -> dict:
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} as in the official archive:
    Python 2 pickles (protocol 2) of dicts with b'data' (uint8, N x 3072: 1024 red, 1024 green, 1024 blue, each row-major 32x32)
    and b'labels' (list of ints). Returns the images (N, 3, 32, 32) and labels of train (in batch order) and test."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    out = {"train_images": [], "train_labels": []}
    for k in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        _dump_py2({b"batch_label": f"training batch {k} of 5".encode(), b"labels": labels, b"data": data,
                   b"filenames": [f"img{k}_{i}.png".encode() for i in range(per_batch)]}, base / f"data_batch_{k}")
        out["train_images"].append(data.reshape(-1, 3, 32, 32))
        out["train_labels"] += labels
    test = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    test_labels = [int(v) for v in rng.integers(0, 10, size=n_test)]
    _dump_py2({b"batch_label": b"testing batch 1 of 1", b"labels": test_labels, b"data": test}, base / "test_batch")
    _dump_py2({b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072},
              base / "batches.meta")
    out["train_images"] = np.concatenate(out["train_images"])
    out["test_images"], out["test_labels"] = test.reshape(-1, 3, 32, 32), test_labels
    return out


def _idx_file(path: Path, array: np.ndarray) -> None:
    """The idx format (LeCun): magic 0x00 0x00 <type 0x08 = ubyte> <ndim>, ndim big-endian uint32 sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict:
    """root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (uncompressed idx files)."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        _idx_file(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx_file(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[prefix] = (images, labels)
    return out


def write_image_folder(root: Path, classes=("cat", "dog", "emu"), splits=None, size=(12, 10), ext="png",
                       seed: int = 0) -> dict:
    """root/<split>/<class>/<NNN>.<ext> RGB images of ``size`` = (width, height); ``splits`` maps a split
    folder to images per class (default train: 4, test: 2). Returns {split: [(path, class, uint8 HxWx3)]} in
    ImageFolder's order (class folders sorted, then file names)."""
    rng = np.random.default_rng(seed)
    splits = splits or {"train": 4, "test": 2}
    out = {}
    for split, per_class in splits.items():
        out[split] = []
        for c in sorted(classes):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                path = folder / f"{i:03d}.{ext}"
                Image.fromarray(pixels).save(path)
                out[split].append((path, c, pixels))
    return out
