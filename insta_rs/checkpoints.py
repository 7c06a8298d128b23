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

from .errors import CheckpointError


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


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file: identifies the exact checkpoint a certification run used."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
