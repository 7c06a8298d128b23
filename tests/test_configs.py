"""Every config group composes, and every object it names instantiates (the template's test_configs)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hydra.utils import instantiate

from conftest import CONF
from insta_rs.training import SmoothingClassifier, TrainSettings


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["dataset", "model", "train", "trainer", "logger", "callbacks", "experiment",
                                   "debug", "certify", "sigma_search"])
def test_group_has_choices(group):
    assert choices(group), f"conf/{group} is empty"


@pytest.mark.parametrize("train", [t for t in choices("train") if t != "selector"])  # selector: test_selector.py
def test_train_configs_compose_and_build_a_module(compose, train):
    cfg = compose("train", [f"train={train}", "dataset=synthetic", "model=small_cnn"])
    source = instantiate(cfg.dataset)
    info = source.info
    model = instantiate(cfg.model, num_classes=info.num_classes, input_shape=tuple(info.input_shape),
                        mean=tuple(info.mean), std=tuple(info.std))
    settings = instantiate(cfg.train, _convert_="all")
    assert isinstance(settings, TrainSettings)
    module = SmoothingClassifier(model, info.num_classes, settings, dataset_info=dataclasses.asdict(info), num_train=10)
    x = torch.rand(2, *info.input_shape)
    assert module(x).shape == (2, info.num_classes)


@pytest.mark.parametrize("experiment", choices("experiment"))
def test_experiments_compose(compose, experiment):
    cfg = compose("train", [f"experiment={experiment}"])
    assert isinstance(instantiate(cfg.train, _convert_="all"), TrainSettings)


@pytest.mark.parametrize("trainer", [t for t in choices("trainer") if t in ("cpu", "ddp_sim")])
def test_cpu_trainers_instantiate(compose, trainer, tmp_path):
    cfg = compose("train", [f"trainer={trainer}"])
    trainer = instantiate(cfg.trainer, logger=False, default_root_dir=str(tmp_path), enable_checkpointing=False)
    assert trainer.max_epochs == cfg.train.epochs


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_gpu_trainers_name_the_gpu(compose, trainer):
    cfg = compose("train", [f"trainer={trainer}"])
    assert cfg.trainer.accelerator == "gpu"
    if trainer == "ddp":
        assert cfg.trainer.strategy == "ddp"


@pytest.mark.parametrize("logger", choices("logger"))
def test_loggers_instantiate(compose, logger, tmp_path, monkeypatch):
    monkeypatch.setenv("INSTA_RS_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose("train", [f"logger={logger}"])
    for name, logger_cfg in (cfg.logger or {}).items():
        obj = instantiate(logger_cfg)
        assert str(tmp_path) in str(obj.save_dir)


def test_callbacks_instantiate(compose, tmp_path, monkeypatch):
    monkeypatch.setenv("INSTA_RS_RUN_DIR", str(tmp_path))
    cfg = compose("train")
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    checkpoint = callbacks[0]
    assert checkpoint.monitor == "val/acc_noisy" and checkpoint.save_last


@pytest.mark.parametrize("certify", choices("certify"))
@pytest.mark.parametrize("search", choices("sigma_search"))
def test_certify_configs_compose(compose, certify, search):
    cfg = compose("certify", ["ckpt_path=x.ckpt", f"certify={certify}", f"sigma_search={search}"])
    assert 0 < cfg.certify.alpha < 1 and cfg.certify.n >= 1
    assert cfg.sigma_search._target_.startswith("insta_rs.search.")


def test_certify_defaults_are_cohen_protocol(compose):
    cfg = compose("certify", ["ckpt_path=x.ckpt"])
    assert (cfg.certify.n0, cfg.certify.n, cfg.certify.alpha) == (100, 100_000, 0.001)


def test_fixed_sigma_instantiates(compose):
    cfg = compose("certify", ["ckpt_path=x.ckpt", "sigma_search.sigma=0.5"])
    assert instantiate(cfg.sigma_search).sigma == 0.5
