"""The data layer: tiny files in each real on-disk format, read through torchvision's real loaders.

Expected values come from the arrays the fixtures wrote (x = byte / 255), from scikit-learn's raw
digits (x = v / 16), or from the split rules written out independently (ceil / round of fractions).
"""

from __future__ import annotations

import math
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from conftest import CONF, ROOT
from fixtures_data import CIFAR_CLASSES, write_cifar10, write_image_folder, write_mnist
from insta_rs.data import (CIFAR10, CIFAR10_MEAN, MNIST, DataSource, Digits, ImageFolderData, ImageNet,
                           IndexedDataset, SmoothingDataModule, Synthetic)
from insta_rs.errors import ConfigError, DataError

SHARED_12K = Path(os.environ.get("INSTA_RS_SHARED", ROOT.parent / "shared")) / "data" / "cifar10-jpg-12k"


def items(dataset):
    return [dataset[i] for i in range(len(dataset))]


def assert_one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    """The message is one line holding ``parts``, and names settings by field (``root=``): the library knows
    no config paths (the entry points add ``dataset.``, see test_entry_points_name_the_full_key)."""
    message = str(err.value)
    assert "\n" not in message, message
    assert "dataset." not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# ---------------------------------------------------------------------------------------------- CIFAR-10


@pytest.fixture
def cifar_root(tmp_path):
    root = tmp_path / "cifar"
    return root, write_cifar10(root, per_batch=4, n_test=6)


def test_cifar10_batches_load_with_pixels_labels_and_indices(cifar_root):
    root, written = cifar_root
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:  # the fixture is in the official format
        assert {b"data", b"labels"} <= set(pickle.load(f, encoding="bytes"))
    source = CIFAR10(root, val_size=5)
    assert source.info.input_shape == (3, 32, 32) and source.info.num_classes == 10
    assert source.info.class_names == tuple(CIFAR_CLASSES)
    assert source.info.mean == (0.4914, 0.4822, 0.4465) and source.info.std == (0.2470, 0.2435, 0.2616)
    train, val, test = (source.split(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (15, 5, 6)
    expected = {
        "train": (written["train_images"][:15], written["train_labels"][:15]),
        "val": (written["train_images"][15:], written["train_labels"][15:]),  # the last val_size images
        "test": (written["test_images"], written["test_labels"]),
    }
    for split, dataset in (("train", train), ("val", val), ("test", test)):
        images, labels = expected[split]
        for i, (x, y, idx) in enumerate(items(dataset)):
            assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
            assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
            assert torch.equal(x, torch.from_numpy(images[i].astype(np.float32) / 255.0))
            assert y == labels[i] and isinstance(y, int)
            assert idx == i and isinstance(idx, int)
        assert dataset.targets == list(labels)


def test_cifar10_train_augmentation_is_a_padded_crop_and_optional_flip(cifar_root):
    root, written = cifar_root
    source = CIFAR10(root, val_size=5)
    augmented = source.split("train", train_transform=True)
    original = torch.from_numpy(written["train_images"][:15].astype(np.float32) / 255.0)
    torch.manual_seed(0)
    seen = set()
    for i in range(len(augmented)):
        for _ in range(4):
            x, y, idx = augmented[i]
            padded = torch.nn.functional.pad(original[i], (4, 4, 4, 4))
            matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                       if torch.equal(x, (padded.flip(-1) if flip else padded)[:, dy:dy + 32, dx:dx + 32])]
            assert matches, f"item {i}: not a 32x32 crop of the 4-padded image (or its mirror image)"
            seen.add(matches[0])
            assert (y, idx) == (written["train_labels"][i], i)
    assert len(seen) > 10  # random: many different crops / flips were drawn
    assert {flip for _, _, flip in seen} == {False, True}
    assert {0, 8} & {dy for dy, _, _ in seen} and {0, 8} & {dx for _, dx, _ in seen}  # shifts by the full 4 pixels


def test_cifar10_settings_and_layout_errors(cifar_root, tmp_path):
    root, _ = cifar_root
    with pytest.raises(ConfigError) as err:
        CIFAR10(root, val_size=20)  # the fixture's training set has 20 images
    assert_one_line(err, "val_size=20", "[0, 20)")
    with pytest.raises(ConfigError):
        CIFAR10(root, val_size=-1)

    with pytest.raises(DataError) as err:
        CIFAR10(tmp_path / "nowhere")
    message = assert_one_line(err, "no CIFAR-10 batches found", "download=true",
                              f"{tmp_path / 'nowhere'}/cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta")
    assert message.startswith(f"root={tmp_path / 'nowhere'}:")
    with pytest.raises(DataError) as err:
        CIFAR10(root / "cifar-10-batches-py")  # one level too deep
    assert_one_line(err, f"set root={root}")

    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError) as err:
        CIFAR10(root)
    assert_one_line(err, "missing data_batch_3;")


def test_cifar10_corrupted_batch_is_a_data_error(cifar_root):
    root, _ = cifar_root
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError) as err:
        CIFAR10(root)
    assert_one_line(err, "cannot read the CIFAR-10 batches")


# ---------------------------------------------------------------------------------------------- MNIST


def test_mnist_idx_files_load(tmp_path):
    written = write_mnist(tmp_path, n_train=12, n_test=5)
    source = MNIST(tmp_path, val_size=3)
    assert source.info.input_shape == (1, 28, 28) and source.info.num_classes == 10
    assert source.info.mean == (0.1307,) and source.info.std == (0.3081,)
    train_images, train_labels = written["train"]
    test_images, test_labels = written["t10k"]
    expected = {"train": (train_images[:9], train_labels[:9]), "val": (train_images[9:], train_labels[9:]),
                "test": (test_images, test_labels)}
    for split, (images, labels) in expected.items():
        dataset = source.split(split)
        assert len(dataset) == len(labels)
        for i, (x, y, idx) in enumerate(items(dataset)):
            assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
            assert torch.equal(x[0], torch.from_numpy(images[i].astype(np.float32) / 255.0))
            assert (y, idx) == (int(labels[i]), i)
    # no augmentation for digits: the training transform changes nothing
    assert torch.equal(source.split("train", train_transform=True)[4][0], source.split("train")[4][0])


def test_mnist_layout_errors(tmp_path):
    with pytest.raises(DataError) as err:
        MNIST(tmp_path / "empty")
    message = assert_one_line(err, "no MNIST files found", "MNIST/raw/train-images-idx3-ubyte",
                              "t10k-labels-idx1-ubyte", "download=true")
    assert message.startswith(f"root={tmp_path / 'empty'}:")

    write_mnist(tmp_path / "flat")
    raw = tmp_path / "flat" / "MNIST" / "raw"
    for f in raw.iterdir():
        f.rename(tmp_path / "flat" / f.name)
    with pytest.raises(DataError) as err:
        MNIST(tmp_path / "flat")
    assert_one_line(err, "one level too high")

    write_mnist(tmp_path / "bad")
    (tmp_path / "bad" / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x07garbage")
    with pytest.raises(DataError) as err:
        MNIST(tmp_path / "bad")
    assert_one_line(err, "cannot read the MNIST idx files")


# ---------------------------------------------------------------------------------------------- ImageFolder


def pixel_key(x: torch.Tensor) -> bytes:
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy().tobytes()


def test_image_folder_png_tree_classes_values_and_stratified_val(tmp_path):
    written = write_image_folder(tmp_path, classes=("emu", "cat", "dog"), splits={"train": 4, "test": 2},
                                 size=(32, 32))
    source = ImageFolderData(tmp_path, image_size=32, val_fraction=0.25, split_seed=0)
    assert source.info.class_names == ("cat", "dog", "emu") and source.info.num_classes == 3
    assert source.info.input_shape == (3, 32, 32) and source.info.name == "image_folder"
    by_pixels = {pixels.tobytes(): (path, cls) for _, entries in written.items() for path, cls, pixels in entries}

    train, val, test = (source.split(s) for s in ("train", "val", "test"))
    assert len(val) == math.ceil(0.25 * 12) and len(train) == 12 - len(val) and len(test) == 6
    # test split: ImageFolder order, exact PNG pixels / 255
    for i, (x, y, idx) in enumerate(items(test)):
        path, cls, pixels = written["test"][i]
        assert torch.equal(x, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0)
        assert (source.info.class_names[y], idx) == (cls, i)
    # train + val: disjoint, together all the training files, each labelled with its folder's class
    seen = []
    for dataset in (train, val):
        for i, (x, y, idx) in enumerate(items(dataset)):
            path, cls = by_pixels[pixel_key(x)]
            assert path.parent.parent.name == "train" and source.info.class_names[y] == cls and idx == i
            seen.append(path)
    assert sorted(seen) == sorted(p for p, _, _ in written["train"])
    # stratified: one held-out image per class
    assert Counter(val.targets) == {0: 1, 1: 1, 2: 1}
    # fixed by split_seed
    again = ImageFolderData(tmp_path, image_size=32, val_fraction=0.25, split_seed=0).split("val")
    assert [pixel_key(x) for x, _, _ in items(again)] == [pixel_key(x) for x, _, _ in items(val)]
    others = {tuple(pixel_key(x) for x, _, _ in items(ImageFolderData(tmp_path, val_fraction=0.25, split_seed=s)
                                                      .split("val"))) for s in range(1, 6)}
    assert len(others | {tuple(pixel_key(x) for x, _, _ in items(val))}) > 1


def test_image_folder_explicit_val_dir_and_no_holdout(tmp_path):
    write_image_folder(tmp_path, splits={"train": 3, "valid": 2, "test": 1}, size=(32, 32))
    source = ImageFolderData(tmp_path, val_dir="valid")
    assert [len(source.split(s)) for s in ("train", "val", "test")] == [9, 6, 3]
    source = ImageFolderData(tmp_path, val_fraction=0.0)
    assert [len(source.split(s)) for s in ("train", "val", "test")] == [9, 0, 3]


def test_image_folder_resize_then_centre_crop(tmp_path):
    written = write_image_folder(tmp_path, classes=("a", "b"), splits={"train": 2, "test": 1}, size=(48, 40))
    source = ImageFolderData(tmp_path, image_size=32, resize=36, val_fraction=0.0)
    x, _, _ = source.split("test")[0]
    assert x.shape == (3, 32, 32)
    # independent reference: PIL bilinear resize of the shorter side 40 -> 36 (width 48 -> 43), centre 32x32 crop
    resized = np.asarray(Image.fromarray(written["test"][0][2]).resize((43, 36), Image.BILINEAR))
    candidates = [resized[top:top + 32, left:left + 32] for top in (2,) for left in (5, 6)]
    got = (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert any(np.abs(got.astype(int) - c.astype(int)).max() <= 1 for c in candidates)
    # without resize, images of another size are resized to image_size, then centre-cropped
    assert ImageFolderData(tmp_path, image_size=16, val_fraction=0.5).split("train")[0][0].shape == (3, 16, 16)


@pytest.mark.parametrize("augment", ["crop_flip", "random_resized_crop", "none"])
def test_image_folder_training_augmentations(tmp_path, augment):
    write_image_folder(tmp_path, classes=("a", "b"), splits={"train": 2, "test": 1}, size=(24, 24), ext="jpg")
    source = ImageFolderData(tmp_path, image_size=24, augment=augment, val_fraction=0.0)
    plain, augmented = source.split("train"), source.split("train", train_transform=True)
    torch.manual_seed(0)
    draws = [augmented[0][0] for _ in range(8)]
    assert all(x.shape == (3, 24, 24) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 for x in draws)
    same = [torch.equal(x, plain[0][0]) for x in draws]
    assert all(same) if augment == "none" else not all(same)
    assert augmented[1][1:] == plain[1][1:] == (0, 1)


def test_image_folder_setting_errors(tmp_path):
    write_image_folder(tmp_path, size=(8, 8))
    for kwargs, setting in [({"val_fraction": 1.0}, "val_fraction=1.0"),
                            ({"val_fraction": -0.1}, "val_fraction=-0.1"),
                            ({"image_size": 0}, "image_size=0"),
                            ({"augment": "mixup"}, "augment='mixup'"),
                            ({"resize": 8, "image_size": 16}, "resize=8"),
                            ({"mean": (0.5, 0.5)}, "mean="),
                            ({"std": (0.5, 0.0, 0.5)}, "std=")]:
        with pytest.raises(ConfigError) as err:
            ImageFolderData(tmp_path, **kwargs)
        assert assert_one_line(err).startswith(setting)
    with pytest.raises(ConfigError) as err:  # 3 classes cannot each give an image to a 1-image val split
        ImageFolderData(tmp_path, val_fraction=0.05)
    assert assert_one_line(err).startswith("val_fraction=0.05")


def test_image_folder_layout_errors(tmp_path):
    with pytest.raises(DataError) as err:
        ImageFolderData(tmp_path / "nowhere")
    message = assert_one_line(err, "no such folder", "nowhere/train/<class>/<image>", "nowhere/test/<class>/<image>")
    assert message.startswith(f"root={tmp_path / 'nowhere'}:")

    write_image_folder(tmp_path / "no_test", splits={"train": 2})
    with pytest.raises(DataError) as err:
        ImageFolderData(tmp_path / "no_test")
    assert assert_one_line(err, str(tmp_path / "no_test" / "test")).startswith("test_dir=test:")

    write_image_folder(tmp_path / "empty", size=(8, 8))
    (tmp_path / "empty" / "train" / "yak").mkdir()
    (tmp_path / "empty" / "train" / "yak" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError) as err:
        ImageFolderData(tmp_path / "empty")
    assert assert_one_line(err, "class folders without images", "yak").startswith("train_dir=train:")

    write_image_folder(tmp_path / "mismatch" , classes=("cat", "dog"), splits={"train": 2}, size=(8, 8))
    write_image_folder(tmp_path / "mismatch", classes=("cat", "fox"), splits={"test": 1}, size=(8, 8))
    with pytest.raises(DataError) as err:
        ImageFolderData(tmp_path / "mismatch")
    assert assert_one_line(err, "only in train: ['dog']", "only in test: ['fox']").startswith("test_dir=test:")


def test_entry_points_name_the_full_key(tmp_path):
    """What the library names by field, the entry points (insta_rs.cli) report with the dataset group's key:
    the setting at fault, the other settings the message names, and an image that fails to load only once the
    source is read (after it was built)."""
    from insta_rs.cli import build_group, data_errors

    write_image_folder(tmp_path / "no_test", splits={"train": 2}, size=(8, 8))
    spec = {"_target_": "insta_rs.data.ImageFolderData", "root": str(tmp_path / "no_test"), "train_dir": "train",
            "test_dir": "test", "val_dir": None}
    with pytest.raises(DataError) as err:
        build_group(spec, "dataset")
    message = str(err.value)
    assert message.startswith("dataset.test_dir=test: ") and f"under dataset.root={tmp_path / 'no_test'};" in message

    with pytest.raises(ConfigError) as err:  # a DictConfig, as train.py passes it
        build_group(OmegaConf.create({"_target_": "insta_rs.data.Digits", "val_fraction": 0.9, "test_fraction": 0.3}),
                    "dataset")
    message = str(err.value)
    assert message.startswith("dataset.val_fraction=0.9 is invalid") and "(dataset.test_fraction=0.3)" in message

    written = write_image_folder(tmp_path / "images", size=(8, 8))
    spec = {"_target_": "insta_rs.data.ImageFolderData", "root": str(tmp_path / "images"), "val_fraction": 0.0}
    source = build_group(spec, "dataset")
    written["train"][1][0].write_bytes(b"not an image")
    with pytest.raises(DataError) as err, data_errors(spec):
        source.split("train")[1]
    assert str(err.value).startswith(f"dataset.root={tmp_path / 'images'}: cannot read image")
    with pytest.raises(ConfigError) as err, data_errors(spec):  # only DataErrors: a ConfigError is the caller's
        source.split("validation")
    assert str(err.value).startswith("split='validation'")


def test_imagenet_preset(tmp_path):
    write_image_folder(tmp_path, classes=("n01", "n02"), splits={"train": 100, "val": 1}, size=(20, 16))
    source = ImageNet(tmp_path)
    info = source.info
    assert (info.name, info.num_classes, info.input_shape) == ("imagenet", 2, (3, 224, 224))
    assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    assert [len(source.split(s)) for s in ("train", "val", "test")] == [198, 2, 2]  # ceil(1% of 200) held out
    assert source.split("test")[0][0].shape == source.split("train", train_transform=True)[0][0].shape == (3, 224, 224)


@pytest.mark.skipif(not SHARED_12K.is_dir(), reason="the shared cifar10-jpg-12k subset is not present")
def test_real_cifar10_jpg_12k_subset(compose):
    source = instantiate(compose("train", ["dataset=cifar10_jpg_12k"]).dataset)
    info = source.info
    assert (info.name, info.num_classes, info.input_shape) == ("cifar10-jpg-12k", 10, (3, 32, 32))
    assert info.class_names == tuple(CIFAR_CLASSES) and info.mean == CIFAR10_MEAN
    train, val, test = (source.split(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (9000, 1000, 2000)
    assert Counter(val.targets) == {k: 100 for k in range(10)} and Counter(test.targets) == {k: 200 for k in range(10)}
    x, y, idx = test[1999]
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1 and (y, idx) == (9, 1999)


# ---------------------------------------------------------------------------------------------- Digits


def test_digits_sizes_stratification_values_and_indices():
    from sklearn.datasets import load_digits

    raw = load_digits()
    source = Digits()
    splits = {s: source.split(s) for s in ("train", "val", "test")}
    n_test = math.ceil(0.2 * 1797)
    n_val = round(0.1 * 1797)
    assert {s: len(d) for s, d in splits.items()} == {"train": 1797 - n_test - n_val, "val": n_val, "test": n_test}
    assert (len(splits["train"]), n_val, n_test) == (1257, 180, 360)  # as documented
    assert source.info.input_shape == (1, 8, 8) and source.info.num_classes == 10

    overall = np.bincount(raw.target, minlength=10) / 1797
    for name, dataset in splits.items():
        counts = np.bincount(dataset.targets, minlength=10)
        assert np.abs(counts - overall * len(dataset)).max() <= 2, (name, counts)

    pairs = []
    for dataset in splits.values():
        for i, (x, y, idx) in enumerate(items(dataset)):
            assert idx == i and x.dtype == torch.float32 and x.shape == (1, 8, 8)
            assert torch.equal(x * 16, (x * 16).round())
            pairs.append((y, (x[0] * 16).to(torch.uint8).numpy().tobytes()))
    assert min(float(d.dataset.images.min()) for d in splits.values()) == 0.0
    assert max(float(d.dataset.images.max()) for d in splits.values()) == 1.0
    expected = [(int(t), img.astype(np.uint8).tobytes()) for t, img in zip(raw.target, raw.images)]
    assert sorted(pairs) == sorted(expected)  # every image exactly once, with its label, as v / 16
    assert source.info.mean == (round(float(raw.images.mean() / 16), 4),)
    assert source.info.std == pytest.approx((float(raw.images.std() / 16),), abs=2e-4)


def test_digits_split_is_fixed_by_split_seed():
    def keys(source, name):
        return [(y, x.numpy().tobytes()) for x, y, _ in items(source.split(name))]

    a, b, c = Digits(), Digits(), Digits(split_seed=1)
    assert keys(a, "test") == keys(b, "test") and keys(a, "val") == keys(b, "val")
    assert keys(a, "test") != keys(c, "test")
    with pytest.raises(ConfigError) as err:
        Digits(val_fraction=0.5, test_fraction=0.5)
    assert assert_one_line(err).startswith("val_fraction=0.5")


# ---------------------------------------------------------------------------------------------- Synthetic


def test_synthetic_is_seeded_shaped_and_learnable():
    a, b, c = Synthetic(seed=3), Synthetic(seed=3), Synthetic(seed=4)
    for name in ("train", "val", "test"):
        xa = torch.stack([x for x, _, _ in items(a.split(name))])
        assert torch.equal(xa, torch.stack([x for x, _, _ in items(b.split(name))]))
        assert a.split(name).targets == b.split(name).targets
    assert not torch.equal(a.split("test")[0][0], c.split("test")[0][0])

    source = Synthetic(num_classes=4, input_shape=(3, 5, 7), train_size=200, val_size=20, test_size=100, seed=1)
    assert source.info.input_shape == (3, 5, 7) and source.info.num_classes == 4
    train, test = items(source.split("train")), items(source.split("test"))
    assert [len(source.split(s)) for s in ("train", "val", "test")] == [200, 20, 100]
    assert Counter(y for _, y, _ in train) == {k: 50 for k in range(4)}
    xs = torch.stack([x for x, _, _ in train])
    assert xs.shape == (200, 3, 5, 7) and xs.dtype == torch.float32 and 0 <= xs.min() and xs.max() <= 1
    assert source.info.mean == pytest.approx(tuple(xs.mean(dim=(0, 2, 3)).tolist()), abs=1e-5)
    # nearest class mean (estimated from train) classifies the test split
    ys = torch.tensor([y for _, y, _ in train])
    means = torch.stack([xs[ys == k].mean(0) for k in range(4)]).flatten(1)
    test_x = torch.stack([x for x, _, _ in test]).flatten(1)
    predicted = torch.cdist(test_x, means).argmin(1)
    accuracy = (predicted == torch.tensor([y for _, y, _ in test])).float().mean()
    assert accuracy >= 0.95
    assert [idx for _, _, idx in test] == list(range(100))


# ---------------------------------------------------------------------------------------------- API pieces


def test_indexed_dataset_wraps_pairs_and_checks_the_split_name():
    class Pairs(torch.utils.data.Dataset):
        targets = [2, 0, 1]

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.full((1, 2, 2), i / 4), torch.tensor(self.targets[i])

    dataset = IndexedDataset(Pairs())
    assert dataset.targets == [2, 0, 1] and len(dataset) == 3
    x, y, idx = dataset[np.int64(2)]
    assert float(x[0, 0, 0]) == 0.5 and (y, idx) == (1, 2) and type(y) is int and type(idx) is int
    with pytest.raises(IndexError):
        dataset[3]
    assert [idx for _, _, idx in dataset] == [0, 1, 2]
    with pytest.raises(ConfigError) as err:
        Synthetic().split("validation")
    assert_one_line(err, "split='validation'")


def test_datamodule_loaders():
    source = Synthetic(train_size=50, val_size=30, test_size=20)
    module = SmoothingDataModule(source, batch_size=16, eval_batch_size=25)
    assert module.info is source.info
    torch.manual_seed(0)
    batches = list(module.train_dataloader())
    assert [len(b[0]) for b in batches] == [16, 16, 16, 2]  # drop_last=False
    x, y, idx = batches[0]
    assert x.shape == (16, 1, 8, 8) and y.dtype == idx.dtype == torch.int64
    order = torch.cat([b[2] for b in batches]).tolist()
    assert sorted(order) == list(range(50)) and order != list(range(50))  # each once, shuffled
    labels = dict(zip(order, torch.cat([b[1] for b in batches]).tolist()))
    assert [labels[i] for i in range(50)] == source.split("train").targets
    val = list(module.val_dataloader())
    assert [len(b[0]) for b in val] == [25, 5] and torch.cat([b[2] for b in val]).tolist() == list(range(30))
    with pytest.raises(ConfigError):
        SmoothingDataModule(source, batch_size=0)


# ---------------------------------------------------------------------------------------------- Hydra configs


@pytest.fixture
def fixture_roots(tmp_path):
    write_cifar10(tmp_path / "cifar", per_batch=3, n_test=2)
    write_mnist(tmp_path / "mnist", n_train=8, n_test=2)
    write_image_folder(tmp_path / "folder", splits={"train": 10, "test": 1}, size=(32, 32))  # 10% = 1 per class
    write_image_folder(tmp_path / "imagenet", splits={"train": 100, "val": 1}, size=(8, 8))  # 1% = 1 per class
    return {"insta_rs.data.CIFAR10": tmp_path / "cifar", "insta_rs.data.MNIST": tmp_path / "mnist",
            "insta_rs.data.ImageFolderData": tmp_path / "folder", "insta_rs.data.ImageNet": tmp_path / "imagenet"}


@pytest.mark.parametrize("config", sorted(p.name for p in (CONF / "dataset").glob("*.yaml")))
def test_dataset_configs_instantiate(config, fixture_roots, compose):
    cfg = compose("train", [f"dataset={config.removesuffix('.yaml')}"]).dataset
    assert "batch_size" not in cfg  # the train group owns batch sizes
    small = {"val_size": 2} if cfg._target_ in ("insta_rs.data.CIFAR10", "insta_rs.data.MNIST") else {}
    if "root" in cfg.keys() and not (config == "cifar10_jpg_12k.yaml" and SHARED_12K.is_dir()):
        cfg.root = str(fixture_roots[cfg._target_])
    source = instantiate(cfg, **small)
    assert isinstance(source, DataSource)
    info = source.info
    x, y, idx = source.split("test")[0]
    assert x.shape == info.input_shape and 0 <= y < info.num_classes and idx == 0
    assert len(info.mean) == len(info.std) == info.input_shape[0]
    expected_names = {"cifar10_jpg_12k.yaml": "cifar10-jpg-12k"}
    assert info.name == expected_names.get(config, config.removesuffix(".yaml"))


@pytest.mark.parametrize("entry", ["train", "certify"])
def test_dataset_config_roots_resolve_against_the_project_from_any_folder(compose, entry, tmp_path, monkeypatch):
    """The default roots live under paths (conf/paths/default.yaml): <project>/data/<name>, and the shared
    folder beside the project, whatever the working directory (the project root is not the cwd here)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INSTA_RS_SHARED", raising=False)
    extra = ["ckpt_path=x.ckpt"] if entry == "certify" else []
    roots = {name: compose(entry, [*extra, f"dataset={name}"]).dataset.root
             for name in ("mnist", "cifar10", "imagenet", "cifar10_jpg_12k")}
    assert roots == {"mnist": str(ROOT / "data" / "mnist"), "cifar10": str(ROOT / "data" / "cifar10"),
                     "imagenet": str(ROOT / "data" / "imagenet"),
                     "cifar10_jpg_12k": str(ROOT.parent / "shared" / "data" / "cifar10-jpg-12k")}
    monkeypatch.setenv("INSTA_RS_SHARED", str(tmp_path / "elsewhere"))
    assert compose(entry, [*extra, "dataset=cifar10_jpg_12k"]).dataset.root == str(tmp_path / "elsewhere" / "data"
                                                                                  / "cifar10-jpg-12k")
    assert OmegaConf.is_missing(compose(entry, [*extra, "dataset=image_folder"]).dataset, "root")
