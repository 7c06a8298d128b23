"""Per-level experts (sigma_search.experts) and the best-level method.

The two experts are the identity fixture's digits model and a copy whose last layer is permuted, so a
draw routed to the wrong expert changes the counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, run_script
from insta_rs.certification import Certifier
from insta_rs.checkpoints import load_run
from insta_rs.experts import LevelExperts
from insta_rs.search.base import FixedSigma
from insta_rs.search.best_level import BestLevelSearch
from insta_rs.search.finite_set import BestLevelSigma, CascadeSigma
from insta_rs.smoothing import Smooth

BASE = ROOT / "tests" / "fixtures" / "identity" / "model.ckpt"
CERTIFY = ["certify=fast", "certify.n0=32", "certify.n=300", "certify.skip=40", "certify.max=3",
           "certify.progress=false", "logger=none", f"ckpt_path={BASE}"]


def edited_checkpoint(path: Path, edit) -> Path:
    checkpoint = torch.load(BASE, map_location="cpu", weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)
    return path


def permute_last_layer(checkpoint: dict) -> None:
    state = checkpoint["state_dict"]
    name = [key for key in state if key.endswith(".weight")][-1]
    state[name] = state[name].roll(1, dims=0)
    bias = name[:-len("weight")] + "bias"
    if bias in state:
        state[bias] = state[bias].roll(1, dims=0)


@pytest.fixture(scope="module")
def experts(tmp_path_factory) -> dict[float, Path]:
    folder = tmp_path_factory.mktemp("experts")
    return {0.25: BASE, 0.5: edited_checkpoint(folder / "other.ckpt", permute_last_layer)}


def experts_override(experts: dict[float, Path], key: str = "sigma_search.experts") -> str:
    return key + "={" + ",".join(f"{s}:{p}" for s, p in experts.items()) + "}"


def in_memory_rows(method, experts: dict[float, Path], indices) -> pd.DataFrame:
    """The rows of a LevelExperts model built directly from the experts' networks (no experts setting)."""
    run = load_run(BASE)
    model = LevelExperts({sigma: load_run(path).model for sigma, path in experts.items()})
    certifier = Certifier(Smooth(model, run.num_classes, batch_size=400), method, 32, 300, 0.001, seed=0)
    test = run.source.split("test")
    xs, labels = [test[i][0] for i in indices], [int(test[i][1]) for i in indices]
    return pd.DataFrame(certifier.rows(list(xs), list(labels), list(indices)))


def test_routing_sends_each_row_to_its_levels_expert(experts):
    models = {sigma: load_run(path).model for sigma, path in experts.items()}
    routed = LevelExperts(models)
    x = torch.randn(6, 1, 8, 8)
    sigma = torch.tensor([0.25, 0.5, 0.5, 0.25, 0.5, 0.25])
    out = routed(x, sigma)
    for i in range(6):
        assert torch.allclose(out[i], models[float(sigma[i])](x[i:i + 1])[0], atol=1e-5)
    assert not torch.allclose(models[0.25](x), models[0.5](x))  # the experts really differ


@pytest.mark.parametrize("name,method", [("grid", BestLevelSigma(levels=[0.5, 0.25])),
                                         ("best_level", BestLevelSearch(levels=[0.5, 0.25]))])
def test_experts_from_checkpoints_give_the_rows_of_a_model_holding_those_experts(tmp_path, experts, name, method):
    run_script("certify.py", *CERTIFY, f"sigma_search={name}", "sigma_search.levels=[0.5,0.25]",
               experts_override(experts), f"hydra.run.dir={tmp_path}")
    written = pd.read_csv(tmp_path / "certify.tsv", sep="\t")
    expected = in_memory_rows(method, experts, written["idx"].tolist())
    for column in ("predict", "radius", "pA_lower", "sigma", "level", "guarantee"):
        assert written[column].tolist() == pytest.approx(expected[column].tolist()) if column != "guarantee" \
            else written[column].tolist() == expected[column].tolist()


def test_best_level_is_the_best_of_the_experts_fixed_sigma_rows(experts):
    indices = [0, 40, 80, 120]
    best = in_memory_rows(BestLevelSearch(levels=[0.25, 0.5]), experts, indices)
    fixed = {sigma: in_memory_rows(FixedSigma(sigma), experts, indices) for sigma in experts}
    assert set(best["guarantee"]) == {"instance"}
    for i in range(len(indices)):
        radii = {sigma: fixed[sigma]["radius"][i] for sigma in experts}
        top = max(radii.values())
        assert best["radius"][i] == top
        if top > 0:
            assert radii[best["sigma"][i]] == top
            assert best["predict"][i] == fixed[best["sigma"][i]]["predict"][i]
    # it ranks by radius, not correctness: its radius is never below either expert's, correct or not
    for sigma in experts:
        assert (best["radius"] >= fixed[sigma]["radius"]).all()


def test_cascade_with_experts_certifies_with_the_routed_model(experts):
    rows = in_memory_rows(CascadeSigma(levels=[0.5, 0.25]), experts, [0, 40])
    assert set(rows["guarantee"]) == {"sound"} and np.isfinite(rows["radius"]).all()


def test_refusals_are_one_line(tmp_path, experts):
    def refused(*overrides):
        result = run_script("certify.py", *CERTIFY, *overrides, f"hydra.run.dir={tmp_path / 'run'}", check=False)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "run" / "certify.tsv").exists()
        return result.returncode, lines[0]

    def set_classes(checkpoint):
        checkpoint["insta_rs"]["num_classes"] = 3

    def set_channels(checkpoint):
        checkpoint["insta_rs"]["dataset_info"]["input_shape"] = [3, 8, 8]

    classes = edited_checkpoint(tmp_path / "classes.ckpt", set_classes)
    channels = edited_checkpoint(tmp_path / "channels.ckpt", set_channels)
    code, line = refused("sigma_search=grid", "sigma_search.levels=[0.5,0.25]",
                         experts_override({0.25: BASE, 0.5: classes}))
    # an expert of another class count or channel count is a setting that names data of another shape: exit 2
    assert code == 2 and "experts[0.5]" in line and "classes" in line
    code, line = refused("sigma_search=grid", "sigma_search.levels=[0.5,0.25]",
                         experts_override({0.25: BASE, 0.5: channels}))
    assert code == 2 and "experts[0.5]" in line and "channel" in line
    code, line = refused("sigma_search=grid", "sigma_search.levels=[1.0,0.5,0.25]",
                         experts_override(experts))
    assert code == 2 and "sigma=1 has no expert" in line


def test_selector_with_experts_trains_certifies_and_is_pinned_to_its_experts(tmp_path, experts):
    run_script("train.py", "train=selector", f"base_ckpt={BASE}", experts_override(experts, "experts"),
               "selector.levels=[0.25,0.5]", "selector.epochs=1", "selector.draws=4", "logger=none",
               f"hydra.run.dir={tmp_path / 'selector'}")
    selector = tmp_path / "selector" / "selector.pt"
    record = torch.load(selector, map_location="cpu", weights_only=True)["insta_rs_selector"]
    assert set(record["experts_sha256"]) == {"0.25", "0.5"}
    with_experts = ["sigma_search=selector", f"sigma_search.ckpt_path={selector}"]
    run_script("certify.py", *CERTIFY, *with_experts, experts_override(experts),
               f"hydra.run.dir={tmp_path / 'certify'}")
    rows = pd.read_csv(tmp_path / "certify" / "certify.tsv", sep="\t")
    assert len(rows) == 3 and set(rows["guarantee"]) == {"sound"}
    for overrides in ([], [experts_override({0.25: experts[0.5], 0.5: experts[0.25]})]):
        result = run_script("certify.py", *CERTIFY, *with_experts, *overrides,
                            f"hydra.run.dir={tmp_path / 'refused'}", check=False)
        assert result.returncode == 1 and "experts" in result.stderr and "Traceback" not in result.stderr


def test_compare_labels_expert_runs_by_their_levels_not_their_paths(tmp_path, experts):
    from insta_rs.compare import compare

    for name, overrides in (("plain", []), ("experts", [experts_override(experts)])):
        run_script("certify.py", *CERTIFY, "sigma_search=grid", "sigma_search.levels=[0.5,0.25]", *overrides,
                   f"hydra.run.dir={tmp_path / name}")
    labels = list(compare([tmp_path / "plain", tmp_path / "experts"]).table["run"])
    assert any("sigma_search.experts=levels 0.25,0.5" in label for label in labels)
    assert not any("ckpt" in label for label in labels)
