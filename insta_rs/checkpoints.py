"""Reading the checkpoints train.py writes: the weights plus, under the key ``insta_rs``, the resolved
run configuration and the dataset's description, so certification needs nothing else.
Loaded with ``weights_only=True``: a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, CheckpointSettingError, ConfigError, DataError, DataSettingError, check


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, or CheckpointError naming what is wrong: missing, truncated or not a
    checkpoint, or not written by insta-rs (no ``insta_rs`` entry)."""
    path = Path(path)
    if path.is_dir():
        inside = path / "checkpoints" / "last.ckpt"
        hint = f"ckpt_path={str(inside)!r}" if inside.is_file() else "<run dir>/checkpoints/last.ckpt"
        raise CheckpointSettingError(f"ckpt_path={str(path)!r} is a folder, not a checkpoint file: use {hint}")
    if not path.is_file():
        raise CheckpointSettingError(f"ckpt_path={str(path)!r} does not exist: give the path of a checkpoint "
                                     f"written by train.py (<run dir>/checkpoints/last.ckpt)")
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
    """DataSettingError (one line, exit code 2) when a data set cannot be fed to the checkpoint's model: another
    class count, or images with another channel count than the training data's (the first layer's weights cannot
    take them). Another height and width is allowed: the models end in adaptive pooling and take any size they
    declare."""
    stored = checkpoint["insta_rs"]
    trained_classes = int(stored["num_classes"])
    trained_shape = (stored.get("dataset_info") or {}).get("input_shape")
    trained_name = (stored.get("dataset_info") or {}).get("name", "its training data")
    if int(num_classes) != trained_classes:
        raise DataSettingError(f"dataset={data_name!r} has {num_classes} classes but the model in "
                               f"ckpt_path={str(path)!r} predicts {trained_classes}: certify with the data set it "
                               f"was trained on ({trained_name!r})")
    if trained_shape is not None and int(input_shape[0]) != int(trained_shape[0]):
        raise DataSettingError(f"dataset={data_name!r} has {int(input_shape[0])}-channel images, input_shape="
                               f"{tuple(int(v) for v in input_shape)}, but the model in ckpt_path={str(path)!r} was "
                               f"trained on {int(trained_shape[0])}-channel images "
                               f"{tuple(int(v) for v in trained_shape)}: certify with the data set it was trained on "
                               f"({trained_name!r})")


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


@dataclass
class TrainedRun:
    """A run written by train.py, loaded once for everything downstream (certification, the selector,
    compare, the semi-elastic rule).

    model: the base classifier with its trained weights, in eval mode, on the CPU.
    config: the run's resolved config (the checkpoint's ``insta_rs.config``).
    source: the data source to use (the run's own, or the one asked for, checked to fit the model).
    source_spec: the config of that data source (``_target_`` plus arguments), as recorded for resuming.
    num_classes: the model's class count. path, sha256: the checkpoint file and its SHA-256.
    """

    model: nn.Module
    config: dict
    source: Any
    source_spec: dict
    num_classes: int
    path: Path
    sha256: str

    @property
    def trained_sigma(self) -> float | None:
        """The one sigma the model was trained at (``train.sigma``, else ``train.sigma0``), or None when
        the run was trained across several sigmas."""
        train = self.config.get("train") or {}
        sigma = train.get("sigma", train.get("sigma0"))
        return float(sigma) if isinstance(sigma, (int, float)) and not isinstance(sigma, bool) else None

    @property
    def run_dir(self) -> Path:
        """The run directory: the parent of ``checkpoints/`` (else the checkpoint's own folder)."""
        parent = self.path.resolve().parent
        return parent.parent if parent.name == "checkpoints" else parent


def load_run(path: str | Path, source=None, source_spec: dict | None = None) -> TrainedRun:
    """Load a train.py checkpoint: rebuild its model from the recorded config, load the weights, and pair it
    with a data source: ``source`` (built from ``source_spec``) when given, else the run's own data set.
    A data set whose classes or channels do not fit the model is a one-line DataError; weights that do
    not fit the rebuilt model a one-line CheckpointError."""
    path = Path(path)
    checkpoint = read_checkpoint(path)
    stored = checkpoint["insta_rs"]
    config = stored["config"]
    if source is None:
        source_spec = dict(config["dataset"])
        source = build_from_spec(source_spec, "insta_rs.data", "dataset")
    info = source.info
    check_data_fits(checkpoint, info.name, info.num_classes, tuple(info.input_shape), path)
    num_classes = int(stored["num_classes"])
    trained_info = stored.get("dataset_info") or {}
    input_shape = tuple(trained_info.get("input_shape", info.input_shape))
    model = build_from_spec(config["model"], "insta_rs.models", "model", num_classes=num_classes,
                            input_shape=input_shape, mean=tuple(trained_info.get("mean", info.mean)),
                            std=tuple(trained_info.get("std", info.std)))
    load_weights(model, checkpoint, path)
    return TrainedRun(model.eval(), config, source, dict(source_spec or {}), num_classes, path, file_digest(path))


def build_from_spec(spec: dict, package: str, setting: str, **extra):
    """Call the class named by ``spec["_target_"]``, which must live in ``package``, with the other keys and
    ``extra`` as keyword arguments. This rebuilds the pieces recorded in a checkpoint without Hydra (the
    library does not import it); unlike Hydra's ``instantiate`` it refuses any target outside insta_rs, so a
    checkpoint file cannot name an arbitrary callable to run."""
    spec = dict(spec or {})
    target = spec.pop("_target_", None)
    module_name, _, name = str(target).rpartition(".")
    if not (isinstance(target, str) and (module_name == package or module_name.startswith(package + "."))):
        raise ConfigError(f"{setting}._target_={target!r} is invalid: expected a class of {package}, "
                          f"e.g. {package}.<Name>")
    factory = getattr(importlib.import_module(module_name), name, None)
    if not callable(factory):
        raise ConfigError(f"{setting}._target_={target!r} is invalid: {module_name} defines no {name}")
    return factory(**spec, **extra)


# --------------------------------------------------------------------------------------------------
# The selector file (selector.pt, written by train=selector; ALGORITHMS.md 3d)

SELECTOR_FORMAT = 1
SELECTOR_FILE = "selector.pt"


def build_selector_network(num_levels: int, input_shape, mean, std, width: int = 16, hidden: int = 64,
                           pool: int = 1) -> nn.Module:
    """h_sel, the network a selector file holds: a SmallCNN (insta_rs.models) with one output per level; with
    pool = k > 1 it sees the k x k block means of its input (``BlockAverage``, a low-pass filter)."""
    from .models import BlockAverage, SmallCNN

    network = SmallCNN(num_classes=num_levels, input_shape=tuple(input_shape), mean=tuple(mean), std=tuple(std),
                       width=width, hidden=hidden)
    if pool == 1:
        return network
    side = tuple(input_shape)[-2:]
    check(all(s % pool == 0 for s in side), "pool", pool, f"a divisor of the image size {side[0]}x{side[1]}")
    return nn.Sequential(BlockAverage(pool), network)


def save_selector(path: str | Path, model: nn.Module, record: dict) -> None:
    """Write a selector file: {"insta_rs_selector": record, "state_dict": weights on CPU} (plain types and
    tensors only, so ``load_selector`` reads it with ``weights_only=True``), through a temporary file.
    ``record`` holds ``format`` (SELECTOR_FORMAT), ``levels`` (increasing), ``sigma`` (sigma_sel),
    ``dataset_info``, ``network`` ({"name", "width", "hidden", "pool"}), and the classifier it belongs to
    (``base_ckpt``, ``base_sha256``); training adds its settings and label counts."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"insta_rs_selector": record, "state_dict": state}, tmp)
    tmp.replace(path)


def load_selector(path: str | Path, device=None) -> tuple[nn.Module, dict]:
    """The selector network (eval mode, on ``device``) and its record from a selector file (read with
    ``weights_only=True``). CheckpointError when missing or not a selector file."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise CheckpointSettingError(f"the selector file {str(path)!r} does not exist: give the selector.pt written "
                                     "by python train.py train=selector base_ckpt=PATH")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"the selector file {str(path)!r} cannot be read "
                              f"({' '.join(str(error).split())[:160]}); train one with train=selector") from error
    record = payload.get("insta_rs_selector") if isinstance(payload, dict) else None
    if not isinstance(record, dict) or record.get("format") != SELECTOR_FORMAT or "state_dict" not in payload:
        raise CheckpointError(f"{str(path)!r} is not a selector file written by train=selector "
                              f"(format {SELECTOR_FORMAT}); give its selector.pt")
    info, network = record["dataset_info"], record["network"]
    model = build_selector_network(len(record["levels"]), info["input_shape"], info["mean"], info["std"],
                                   network["width"], network["hidden"], network.get("pool", 1))
    model.load_state_dict(payload["state_dict"])
    return model.to(device or "cpu").eval(), record
