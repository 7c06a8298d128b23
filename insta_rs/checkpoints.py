"""Reading the checkpoints train.py writes: the weights plus, under the key ``insta_rs``, the resolved
run configuration and the dataset's description, so certification needs nothing else.
Loaded with ``weights_only=True``: a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch

from .errors import CheckpointError, DataError


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, or CheckpointError naming what is wrong: missing, truncated or not a
    checkpoint, or not written by insta-rs (no ``insta_rs`` entry)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={str(path)!r} does not exist: give the path of a checkpoint written by "
                              f"train.py (<run dir>/checkpoints/last.ckpt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as error:
        reason = " ".join(str(error).split())[:160]
        raise CheckpointError(f"ckpt_path={str(path)!r} is truncated or not a PyTorch checkpoint ({reason}); "
                              f"use a complete checkpoint written by train.py") from error
    if not isinstance(checkpoint, dict) or "insta_rs" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"ckpt_path={str(path)!r} was not written by insta-rs train.py (no 'insta_rs' entry); "
                              f"train a model with train.py first")
    return checkpoint


def model_state(checkpoint: dict) -> dict:
    """The base classifier's weights (the LightningModule's ``model.`` entries, prefix removed)."""
    prefix = "model."
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def check_data_fits(checkpoint: dict, data_name: str, num_classes: int, input_shape, path: str | Path) -> None:
    """DataError (one line) when a data set cannot be fed to the checkpoint's model: another class count, or
    images with another channel count than the training data's (the first layer's weights cannot take them).
    Another height and width is allowed: the models end in adaptive pooling and take any size they declare."""
    stored = checkpoint["insta_rs"]
    trained_classes = int(stored["num_classes"])
    trained_shape = (stored.get("dataset_info") or {}).get("input_shape")
    trained_name = (stored.get("dataset_info") or {}).get("name", "its training data")
    if int(num_classes) != trained_classes:
        raise DataError(f"dataset={data_name!r} has {num_classes} classes but the model in ckpt_path={str(path)!r} "
                        f"predicts {trained_classes}: certify with the data set it was trained on ({trained_name!r})")
    if trained_shape is not None and int(input_shape[0]) != int(trained_shape[0]):
        raise DataError(f"dataset={data_name!r} has {int(input_shape[0])}-channel images, input_shape="
                        f"{tuple(int(v) for v in input_shape)}, but the model in ckpt_path={str(path)!r} was trained on "
                        f"{int(trained_shape[0])}-channel images {tuple(int(v) for v in trained_shape)}: certify with "
                        f"the data set it was trained on ({trained_name!r})")


def load_weights(model, checkpoint: dict, path: str | Path) -> None:
    """Load the checkpoint's base-classifier weights (``model_state``) into ``model``; CheckpointError (one
    line, the first mismatching tensor) when they do not fit it, e.g. a model built with other settings."""
    try:
        model.load_state_dict(model_state(checkpoint))
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = " ".join((lines[1] if len(lines) > 1 else lines[0] if lines else type(error).__name__).split())
        raise CheckpointError(f"ckpt_path={str(path)!r}: its weights do not fit the model rebuilt from its config "
                              f"({detail[:200]}); use the checkpoint with the model and data it was trained with"
                              ) from error


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file: identifies the exact checkpoint a certification run used."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
