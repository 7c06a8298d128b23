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
def test_certify_configs_build_their_settings(compose, certify):
    from insta_rs.certification import CertifySettings
    from insta_rs.cli import settings

    built = settings(CertifySettings, compose("certify", ["ckpt_path=x.ckpt", f"certify={certify}"]).certify, "certify")
    assert isinstance(built, CertifySettings) and built.n0 <= built.n


def test_certify_default_is_cohen_protocol_and_the_yaml_adds_nothing(compose):
    """INTERFACE.md: the default is n0 = 100, n = 100,000, alpha = 0.001, and it lives in the dataclass."""
    from insta_rs.certification import CertifySettings
    from insta_rs.cli import settings

    built = settings(CertifySettings, compose("certify", ["ckpt_path=x.ckpt"]).certify, "certify")
    assert built == CertifySettings() and (built.n0, built.n, built.alpha) == (100, 100_000, 0.001)


@pytest.mark.parametrize("search", choices("sigma_search"))
def test_every_sigma_search_config_instantiates(compose, search):
    from insta_rs.cli import build_group, resolved
    from insta_rs.search.base import SigmaMethod

    overrides = {"fixed": ["sigma_search.sigma=0.25"], "selector": ["sigma_search.ckpt_path=selector.pt"]}
    cfg = compose("certify", ["ckpt_path=x.ckpt", f"sigma_search={search}", *overrides.get(search, [])])
    method = build_group(resolved(cfg.sigma_search), "sigma_search", _convert_="all")
    assert isinstance(method, SigmaMethod) and method.guarantee in ("sound", "instance")


@pytest.mark.parametrize("model", choices("model"))
def test_every_model_config_instantiates_and_predicts(compose, model):
    cfg = compose("train", [f"model={model}"])
    shape = (3, 32, 32) if model != "small_cnn" else (1, 8, 8)
    net = instantiate(cfg.model, num_classes=10, input_shape=shape, mean=(0.5,) * shape[0], std=(0.25,) * shape[0])
    assert net.eval()(torch.rand(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("experiment", [e for e in choices("experiment") if "certify" in e])
def test_certify_experiments_compose_and_build(compose, experiment):
    from insta_rs.certification import CertifySettings
    from insta_rs.cli import settings

    cfg = compose("certify", ["ckpt_path=x.ckpt", f"experiment={experiment}"])
    assert isinstance(settings(CertifySettings, cfg.certify, "certify"), CertifySettings)


def test_bad_override_is_refused_by_the_schema(compose):
    from omegaconf.errors import ConfigKeyError, ValidationError
    from hydra.errors import ConfigCompositionException

    for override in ("certify.n=abc", "certify.unknown_key=1"):
        with pytest.raises((ConfigCompositionException, ValidationError, ConfigKeyError)):
            compose("certify", ["ckpt_path=x.ckpt", override])


def test_every_target_takes_the_keys_its_config_gives_it():
    """A key that an object's ``_target_`` does not take is refused in one line (``cli.build_group``, and the
    check of ``+key=value``): no shipped config may give one, in any group, experiment or Hydra node."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    from insta_rs.cli import accepted_keys

    def nodes(node, where):
        if isinstance(node, DictConfig):
            yield where, node
            for key in node.keys():
                yield from nodes(node._get_node(key), f"{where}.{key}")
        elif isinstance(node, ListConfig):
            for i in range(len(node)):
                yield from nodes(node._get_node(i), f"{where}[{i}]")

    checked, refused = 0, []
    for path in sorted(CONF.rglob("*.yaml")):
        for where, node in nodes(OmegaConf.load(path), str(path.relative_to(CONF))):
            if "_target_" not in node or OmegaConf.is_interpolation(node, "_target_"):
                continue
            accepted = accepted_keys(str(node["_target_"]))
            given = {str(k) for k in node.keys() if not str(k).startswith("_") and str(k) != "defaults"}
            checked += 1
            if accepted is not None and not given <= accepted:
                refused.append(f"{where}: {sorted(given - accepted)} not taken by {node['_target_']}")
    assert checked >= 20 and refused == [], refused
