"""python -m insta_rs.compare, the paper-protocol experiment configs, and W&B grouping.

The comparison's numbers are checked against ``analysis.summarize_by_guarantee`` of each file (what
``python -m insta_rs.analyze`` prints) and against values worked out by hand in the comments; its labels
against the one setting the runs were made to differ in. Run folders are laid out as train.py/certify.py
write them (config.yaml resolved, .hydra/config.yaml unresolved, .hydra/hydra.yaml with runtime.cwd); one
test makes them with the real scripts.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.stats import binomtest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, run_script
from fixtures_data import write_cifar10, write_image_folder
from insta_rs import analysis, intervals
from insta_rs.compare import (collect_runs, compare, differing_keys, is_incidental, is_seed, main, path_labels,
                              setting_labels)
from insta_rs.cli import SWEEP_SUFFIX_ENV, SweepGroupCallback, sweep_suffix
from insta_rs.losses import GaussianAugmentation
from insta_rs.training import TrainSettings
from wandb_offline import offline_runs, wait_complete

LOSS_CLASSES = {"gaussian": "GaussianAugmentation", "consistency": "ConsistencyLoss", "macer": "MacerLoss"}

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tsigma\tpA_lower\tguarantee\tsearch_time\tsearch_draws\n"


def tsv_rows(seed: int, n: int = 12, sigma: float = 0.25, guarantee: str = "sound") -> str:
    """n rows as certify.py writes them, from a seeded generator: some abstentions, some wrong answers."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        label = int(rng.integers(10))
        kind = rng.choice(["right", "wrong", "abstain"], p=[0.6, 0.25, 0.15])
        predict = label if kind == "right" else (-1 if kind == "abstain" else (label + 1) % 10)
        radius = 0.0 if kind == "abstain" else round(float(rng.uniform(0, 4 * sigma)), 4)
        lines.append(f"{i * 3}\t{label}\t{predict}\t{radius}\t{int(kind == 'right')}\t{rng.uniform(0.1, 0.3):.4f}"
                     f"\t{sigma}\t0.9\t{guarantee}\t{rng.uniform(0, 0.05):.4f}\t{int(rng.integers(0, 100))}")
    return HEADER + "\n".join(lines) + "\n"


def write_yaml(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(payload, sort_keys=False))


def make_run(root: Path, name: str, rows: str, train: dict | None = None, certify: dict | None = None,
             seed: int = 0) -> Path:
    """A training run root/train_<name> and its certification root/cert_<name>, as the scripts lay them out:
    the checkpoint path is relative to root (hydra.runtime.cwd)."""
    train_dir, cert_dir = root / f"train_{name}", root / f"cert_{name}"
    train_cfg = {"seed": seed, "num_workers": 0, "ckpt_path": None, "tags": [],
                 "dataset": {"_target_": "insta_rs.data.Digits", "val_fraction": 0.1, "split_seed": 0},
                 "model": {"_target_": "insta_rs.models.SmallCNN", "width": 32},
                 "train": {"loss": {"name": "gaussian"}, "method": "gaussian", "sigma": 0.25, "epochs": 2,
                           "lr": 0.05, **(train or {})},
                 "trainer": {"_target_": "pytorch_lightning.Trainer", "max_epochs": 2, "accelerator": "cpu"},
                 "logger": {"wandb": {"save_dir": str(train_dir), "group": "adhoc"}}}
    train_cfg["trainer"]["max_epochs"] = train_cfg["train"]["epochs"]
    write_yaml(train_dir / "config.yaml", train_cfg)
    unresolved = {**train_cfg, "trainer": {**train_cfg["trainer"], "max_epochs": "${train.epochs}"},
                  "logger": {"wandb": {"save_dir": "${oc.env:INSTA_RS_RUN_DIR,.}", "group": "adhoc"}}}
    write_yaml(train_dir / ".hydra" / "config.yaml", unresolved)
    cert_cfg = {"ckpt_path": f"train_{name}/checkpoints/last.ckpt", "seed": 0, "tags": [], "train": {"epochs": 1},
                "certify": {"n0": 100, "n": 1000, "alpha": 0.001, "batch_size": 1000, "split": "test", "skip": 3,
                            "max": None, "progress": False, **(certify or {})},
                "sigma_search": {"_target_": "insta_rs.search.base.FixedSigma", "sigma": None},
                "trainer": {"_target_": "pytorch_lightning.Trainer", "max_epochs": "${train.epochs}"},
                "logger": {}, "dataset": None, "experiment": None}
    write_yaml(cert_dir / ".hydra" / "config.yaml", cert_cfg)
    write_yaml(cert_dir / ".hydra" / "hydra.yaml", {"hydra": {"runtime": {"cwd": str(root)}, "run": {"dir": str(cert_dir)}}})
    (cert_dir / "certify.tsv").write_text(rows)
    return cert_dir


def expected_rows(path: Path, radii) -> dict[str, dict]:
    return analysis.summarize_by_guarantee(analysis.read_certification(path), radii)


def assert_row_matches(row: pd.Series, summary: dict, radii, tolerance: float = 1e-12) -> None:
    """The table's numbers and intervals are the summary's (compare.csv rounds to 6 decimals: tolerance 1e-6)."""
    ci = summary["intervals"]
    assert row["rows"] == summary["rows"]
    assert row["acr"] == pytest.approx(summary["acr"], abs=tolerance)
    assert [row["acr_lo"], row["acr_hi"]] == pytest.approx(ci["acr"], abs=tolerance)
    for r in radii:
        assert row[f"acc@{float(r):g}"] == pytest.approx(summary["certified_accuracy"][float(r)], abs=tolerance)
        assert [row[f"acc@{float(r):g}_lo"], row[f"acc@{float(r):g}_hi"]] == pytest.approx(
            ci["certified_accuracy"][float(r)], abs=tolerance)
    assert row["clean_accuracy"] == pytest.approx(summary["clean_accuracy"], abs=tolerance)
    assert row["abstain_rate"] == pytest.approx(summary["abstain_rate"], abs=tolerance)
    assert [row["abstain_rate_lo"], row["abstain_rate_hi"]] == pytest.approx(ci["abstain_rate"], abs=tolerance)
    assert row["seconds_per_input"] == pytest.approx(summary["seconds_per_input"], abs=tolerance)


# ------------------------------------------------------------------------------------------- labels and numbers


@pytest.fixture
def three_sigmas(tmp_path):
    """Three runs that differ in train.sigma only (and in their paths and logger folders)."""
    return [make_run(tmp_path, f"s{i}", tsv_rows(i, sigma=s), train={"sigma": s})
            for i, s in enumerate((0.12, 0.25, 0.5))]


def test_three_runs_are_labelled_by_the_setting_that_differs(three_sigmas, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # relative ckpt_path is found through hydra.runtime.cwd, not the cwd
    out = tmp_path / "report"
    assert main([str(p) for p in three_sigmas] + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    labels = ["train.sigma=0.12", "train.sigma=0.25", "train.sigma=0.5"]
    csv = pd.read_csv(out / "compare.csv")
    assert list(csv["run"]) == labels
    assert list(csv["train.sigma"]) == [0.12, 0.25, 0.5]
    # digits: the CIFAR-10 grid up to the largest certified radius (below 2 = 4 x 0.5), rounded up to 0.25
    radii = analysis.grid_up_to_reach(analysis.CIFAR10_RADII, [analysis.read_certification(d / "certify.tsv")
                                                              for d in three_sigmas])
    assert radii[-1] <= 2.0 and radii == analysis.CIFAR10_RADII[:len(radii)]
    for row, cert_dir in zip(csv.to_dict("records"), three_sigmas):
        (summary,) = expected_rows(cert_dir / "certify.tsv", radii).values()
        assert_row_matches(pd.Series(row), summary, radii, tolerance=1e-6)
        assert row["guarantee"] == "sound" and row["source"] == str((cert_dir / "certify.tsv").resolve())
    # rounded: no float noise (0.18964409999999998) in the file
    assert not re.search(r"\d\.\d{7,}", (out / "compare.csv").read_text())
    markdown = (out / "compare.md").read_text()
    assert markdown in printed
    for label in labels:
        assert f"| {label} | sound | 12 |" in markdown
    assert "s/input" in markdown and "clean acc" in markdown and f"acc@{radii[-1]:g} |" in markdown
    assert "acc@2.25" not in markdown
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_numbers_by_hand(tmp_path):
    # 4 rows: correct with radii 0.3 and 1.1, one wrong (radius 0.9), one abstention.
    # ACR = (0.3 + 1.1) / 4 = 0.35; acc@0 = 2/4, acc@0.25 = 2/4, acc@0.5 = 1/4, acc@1 = 1/4, acc@1.25 = 0;
    # abstain 1/4; seconds per input = mean(time) = mean(1.5, 2.5, 3.5, 4.5) = 3.0 (time includes the search).
    rows = HEADER + ("0\t1\t1\t0.3\t1\t1.5\t0.5\t0.9\tsound\t0.5\t1\n"
                     "1\t2\t2\t1.1\t1\t2.5\t0.5\t0.9\tsound\t0.5\t1\n"
                     "2\t3\t4\t0.9\t0\t3.5\t0.5\t0.9\tsound\t0.5\t1\n"
                     "3\t5\t-1\t0.0\t0\t4.5\t0.5\t0.9\tsound\t0.5\t1\n")
    path = tmp_path / "hand.tsv"
    path.write_text(rows)
    result = compare([path], radii=(0, 0.25, 0.5, 1.0, 1.25))
    row = result.table.iloc[0]
    assert row["run"] == "hand" and row["acr"] == pytest.approx(0.35)
    assert [row[f"acc@{r:g}"] for r in (0, 0.25, 0.5, 1.0, 1.25)] == pytest.approx([0.5, 0.5, 0.25, 0.25, 0.0])
    assert row["clean_accuracy"] == pytest.approx(0.5) and row["abstain_rate"] == pytest.approx(0.25)
    assert row["seconds_per_input"] == pytest.approx(3.0)


def test_labels_for_a_change_of_loss_name_only_its_options_within_one_loss(tmp_path):
    gaussian = make_run(tmp_path, "g", tsv_rows(1), train={"loss": {"name": "gaussian"}})
    macer16 = make_run(tmp_path, "m16", tsv_rows(2), train={"loss": {"name": "macer", "k": 16, "lbd": 12.0}})
    macer4 = make_run(tmp_path, "m4", tsv_rows(3), train={"loss": {"name": "macer", "k": 4, "lbd": 12.0}})
    cons = make_run(tmp_path, "c", tsv_rows(4), train={"loss": {"name": "consistency", "m": 2, "lbd": 10.0}})
    result = compare([gaussian, macer16, macer4, cons])
    assert list(result.table["run"]) == ["train.loss=gaussian", "train.loss=macer, train.loss.k=16",
                                         "train.loss=macer, train.loss.k=4", "train.loss=consistency"]


def test_method_specific_options_do_not_label_but_shared_settings_do(tmp_path):
    g25 = make_run(tmp_path, "g25", tsv_rows(1), train={"method": "gaussian", "sigma": 0.25})
    g50 = make_run(tmp_path, "g50", tsv_rows(2), train={"method": "gaussian", "sigma": 0.5})
    i25 = make_run(tmp_path, "i25", tsv_rows(3), train={"method": "insta_rs", "sigma": 0.25, "eta": 0.1,
                                                         "sigma_max": 1.0})
    assert list(compare([g25, g50, i25]).table["run"]) == [
        "train.method=gaussian, train.sigma=0.25", "train.method=gaussian, train.sigma=0.5",
        "train.method=insta_rs, train.sigma=0.25"]


def test_seeds_label_runs_only_when_nothing_else_differs_and_paths_never(tmp_path):
    a = make_run(tmp_path, "a", tsv_rows(1), seed=0)
    b = make_run(tmp_path, "b", tsv_rows(2), seed=1)
    assert list(compare([a, b]).table["run"]) == ["seed=0", "seed=1"]  # not their differing ckpt_path
    c = make_run(tmp_path, "c", tsv_rows(3), seed=0, train={"lr": 0.1})
    assert list(compare([a, b, c]).table["run"]) == ["train.lr=0.05", "train.lr=0.05 #2", "train.lr=0.1"]
    # identical settings: the shortest unique ends of the paths
    d = make_run(tmp_path, "d", tsv_rows(4))
    assert list(compare([a, d]).table["run"]) == ["cert_a", "cert_d"]


def test_differing_keys_rules():
    runs = [{"train.sigma": 0.25, "trainer.max_epochs": 2, "train.epochs": 2, "seed": 0, "x.root": "/a"},
            {"train.sigma": 0.5, "trainer.max_epochs": 3, "train.epochs": 3, "seed": 1, "x.root": "/b"}]
    assert differing_keys(runs, derived={"trainer.max_epochs"}) == ["train.sigma", "train.epochs"]
    assert differing_keys([{**r, "train.sigma": 1, "train.epochs": 1} for r in runs]) == ["trainer.max_epochs"]
    assert differing_keys([{**r, "train.sigma": 1, "train.epochs": 1} for r in runs],
                          derived={"trainer.max_epochs"}) == ["seed"]
    assert differing_keys([{"x.root": "/a", "seed": 0}, {"x.root": "/b", "seed": 0}]) == []
    assert is_seed("certify:seed") and is_seed("dataset.split_seed") and not is_seed("train.sigma")
    assert is_incidental("dataset.root") and is_incidental("logger.wandb.group")
    assert is_incidental("certify:ckpt_path") and is_incidental("certify.batch_size")
    assert not is_incidental("train.sigma") and not is_incidental("certify.n")
    # methods by the names users type (the class's config name), a class that cannot be imported by its name
    targets = ["insta_rs.search.base.FixedSigma", "insta_rs.search.finite_set.BestLevelSigma",
               "insta_rs.search.finite_set.CascadeSigma", "insta_rs.search.cascade.Cascade"]
    labels, shown = setting_labels([{"sigma_search._target_": t} for t in targets])
    assert labels == ["sigma_search=fixed", "sigma_search=grid", "sigma_search=cascade", "sigma_search=Cascade"]
    assert shown[1] == {"sigma_search": "grid"}


def test_path_labels_are_the_shortest_unique_ends(tmp_path):
    paths = [tmp_path / "a" / "noise_0.25" / "sigma_0.50", tmp_path / "a" / "noise_1.00" / "sigma_0.50",
             tmp_path / "b" / "x.tsv", tmp_path / "a" / "run7" / "certify.tsv", tmp_path / "c" / "x.txt"]
    assert path_labels(paths) == ["noise_0.25/sigma_0.50", "noise_1.00/sigma_0.50", "b/x", "run7", "c/x"]
    # a multirun's job folders are numbers: each keeps its sweep folder
    jobs = [tmp_path / "multirun" / "12-00-00" / "0" / "certify.tsv",
            tmp_path / "multirun" / "13-30-00" / "1" / "certify.tsv"]
    assert path_labels(jobs) == ["12-00-00/0", "13-30-00/1"]


# ------------------------------------------------------------------------------- Cohen's files and guarantees


COHEN = ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
         "0\t3\t3\t0.5\t1\t0:00:15.250000\n"
         "20\t8\t8\t1.2\t1\t12.5\n"
         "40\t1\t-1\t0.0\t0\t0:00:14.000000\n"
         "60\t2\t5\t0.3\t0\t1:02:03.500000\n")


def test_cohen_files_go_through_compare_with_both_time_spellings(three_sigmas, tmp_path):
    cohen = tmp_path / "cohen" / "noise_0.25" / "test" / "sigma_0.25"  # their released files have no extension
    cohen.parent.mkdir(parents=True)
    cohen.write_text(COHEN)
    result = compare([cohen, *three_sigmas[:2]], radii=(0.0, 0.5, 1.0))
    table = result.table.set_index("run")
    row = table.loc["sigma_0.25"]
    # by hand: ACR = (0.5 + 1.2) / 4 = 0.425; acc@0 = 2/4, acc@0.5 = 2/4, acc@1 = 1/4; abstain 1/4;
    # seconds: 15.25, 12.5, 14.0 and 1:02:03.5 = 3723.5 -> mean 941.3125
    assert row["guarantee"] == "sound" and row["rows"] == 4
    assert row["acr"] == pytest.approx(0.425)
    assert [row["acc@0"], row["acc@0.5"], row["acc@1"]] == pytest.approx([0.5, 0.5, 0.25])
    assert row["abstain_rate"] == pytest.approx(0.25) and row["seconds_per_input"] == pytest.approx(941.3125)
    (summary,) = expected_rows(cohen, (0.0, 0.5, 1.0)).values()
    assert_row_matches(row, summary, (0.0, 0.5, 1.0))
    # the two configured runs are still labelled by their setting
    assert {"train.sigma=0.12", "train.sigma=0.25"} <= set(table.index)


def test_rows_of_different_guarantees_are_grouped_and_labelled(tmp_path):
    sound_a = make_run(tmp_path, "a", tsv_rows(1), certify={"n": 1000})
    mixed = tmp_path / "mixed.tsv"  # one file with rows of two guarantees
    mixed.write_text(tsv_rows(2) + "".join(tsv_rows(3, guarantee="instance").splitlines(keepends=True)[1:]))
    sound_b = make_run(tmp_path, "b", tsv_rows(4), certify={"n": 2000})
    result = compare([sound_a, mixed, sound_b])
    assert list(zip(result.table["run"], result.table["guarantee"])) == [
        ("certify.n=1000", "sound"), ("mixed", "sound"), ("certify.n=2000", "sound"), ("mixed", "instance")]
    by_guarantee = expected_rows(mixed, result.radii)
    for guarantee in ("sound", "instance"):
        row = result.table[(result.table["run"] == "mixed") & (result.table["guarantee"] == guarantee)].iloc[0]
        assert_row_matches(row, by_guarantee[guarantee], result.radii)
    assert "Guarantees differ between rows (sound, instance)" in result.markdown
    # legends: the method by its config name, its sigma (the trained one, for sigma: null), n and alpha where the
    # run's settings say them; a file without settings, the sigma its rows share
    assert set(result.curves) == {"certify.n=1000: fixed sigma=0.25 (sound, n=1000, alpha=0.001)",
                                  "mixed: sigma=0.25 (sound)", "mixed: sigma=0.25 (instance)",
                                  "certify.n=2000: fixed sigma=0.25 (sound, n=2000, alpha=0.001)"}


def test_a_folder_of_runs_expands_in_natural_order_and_imagenet_gets_its_grid(tmp_path):
    sweep = tmp_path / "sweep"
    for job in ("10", "2", "1"):
        cert = make_run(sweep, job, tsv_rows(int(job)), train={"sigma": int(job) / 10})
        cert.rename(sweep / job)  # a multirun: <sweep>/<job number>/certify.tsv
    assert [r.tsv.parent.name for r in collect_runs([sweep])] == ["1", "2", "10"]
    # the CIFAR-10 grid up to the largest certified radius of the runs, rounded up to its step
    top = max(analysis.read_certification(p).query("correct == 1")["radius"].max() for p in sweep.rglob("certify.tsv"))
    assert compare([sweep]).radii == tuple(r for r in analysis.CIFAR10_RADII if r < top + 0.25)
    imagenet = make_run(tmp_path, "in", tsv_rows(5))
    imagenet_b = make_run(tmp_path, "in2", tsv_rows(6), train={"sigma": 0.5})
    for train_dir in (tmp_path / "train_in", tmp_path / "train_in2"):
        cfg = yaml.safe_load((train_dir / "config.yaml").read_text())
        cfg["dataset"] = {"_target_": "insta_rs.data.ImageNet", "root": "data/imagenet"}
        write_yaml(train_dir / "config.yaml", cfg)
    radii = compare([imagenet, imagenet_b]).radii  # ImageNet's grid (step 0.5), up to the largest certified radius
    assert radii[1] == 0.5 and radii == analysis.IMAGENET_RADII[:len(radii)]


def test_a_missing_training_config_leaves_a_note_and_certification_labels(tmp_path, capsys):
    a = make_run(tmp_path, "a", tsv_rows(1), certify={"n": 1000})
    b = make_run(tmp_path, "b", tsv_rows(2), certify={"n": 2000})
    (tmp_path / "train_b" / "config.yaml").unlink()
    assert main([str(a), str(b)]) == 0
    captured = capsys.readouterr()
    assert "certify.n=1000" in captured.out and "certify.n=2000" in captured.out
    assert "training config" in captured.err and "train_b" in captured.err


@pytest.mark.parametrize("args,code,words", [
    (["{tmp}/nowhere"], 2, "no such file"),
    (["{tmp}/trainrun"], 2, "certify it first"),
    (["{tmp}/empty"], 2, "no certify.tsv or predict.tsv in it"),
    (["{tmp}/ok.tsv", "--reference", "nobody"], 2, "--reference"),
    (["{tmp}/ok.tsv", "--reference", "envelope"], 2, "needs --envelope"),
    (["{tmp}/bad.tsv"], 1, "missing column"),
    (["{tmp}/ok.tsv", "--radii", "0,-1"], 2, "--radii"),
    (["{tmp}/ok.tsv", "--wandb", "cloud"], 2, "--wandb"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, args, code, words):
    (tmp_path / "trainrun" / "checkpoints").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.tsv").write_text("idx\tlabel\n0\t1\n")
    (tmp_path / "ok.tsv").write_text(COHEN)
    assert main([a.format(tmp=tmp_path) for a in args]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


# --------------------------------------------------------------------------------------------------- W&B


def test_wandb_logs_one_line_plot_with_a_series_per_run(three_sigmas, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "report"
    assert main([str(p) for p in three_sigmas] + ["--out", str(out), "--wandb"]) == 0
    (run_file,) = (out / "wandb").glob("offline-run-*/*.wandb")
    # the last line says where the run is, and how to upload it
    folder = run_file.parent.resolve()
    last_line = capsys.readouterr().out.splitlines()[-1]
    assert last_line == f"wandb: offline run in {folder} (upload with: wandb sync {folder})"
    wait_complete(run_file)  # W&B's service may still be writing it
    data = run_file.read_bytes()
    assert b"compare/curve" in data and b"wandb/lineseries" in data and b"compare/table" in data
    (table_file,) = run_file.parent.glob("files/media/table/compare/table_*.table.json")
    columns = json.loads(table_file.read_text())["columns"]  # the table carries the intervals and differences
    assert {"acr_lo", "acr_hi", "acc@0.5_lo", "acc@0.5_hi", "d_acr", "d_acr_lo", "pairing"} <= set(columns)
    (curve_file,) = run_file.parent.glob("files/media/table/compare/curve_table*.table.json")
    curve = json.loads(curve_file.read_text())
    assert curve["columns"] == ["step", "lineKey", "lineVal"]
    series = {key for _, key, _ in curve["data"]}
    assert series == {f"train.sigma={s}: fixed sigma={s} (sound, n=1000, alpha=0.001)" for s in ("0.12", "0.25", "0.5")}
    # each series is that run's certified-accuracy curve: at radius 0, the clean accuracy
    first = {key: value for step, key, value in curve["data"] if step == 0.0}
    csv = pd.read_csv(out / "compare.csv").set_index("run")
    for key, value in first.items():
        assert value == pytest.approx(csv.loc[key.split(": ")[0], "clean_accuracy"])


def test_sweep_suffix_and_callback(monkeypatch):
    assert sweep_suffix("RunMode.MULTIRUN", "outputs/multirun/2025-01-31/12-00-00") == "/2025-01-31/12-00-00"
    assert sweep_suffix("RunMode.RUN", "outputs/multirun/2025-01-31/12-00-00") == ""
    monkeypatch.setenv(SWEEP_SUFFIX_ENV, "stale")
    callback = SweepGroupCallback()
    callback.on_job_start(OmegaConf.create({"hydra": {"mode": "MULTIRUN", "sweep": {"dir": "/s/day/time"}}}))
    assert os.environ[SWEEP_SUFFIX_ENV] == "/day/time"
    callback.on_job_start(OmegaConf.create({"hydra": {"mode": "RUN", "sweep": {"dir": "/s/day/time"}}}))
    assert os.environ[SWEEP_SUFFIX_ENV] == ""


def test_wandb_group_is_the_experiment_and_the_sweep(compose, monkeypatch):
    monkeypatch.delenv(SWEEP_SUFFIX_ENV, raising=False)
    assert compose("train", ["logger=wandb"]).logger.wandb.group == "adhoc"
    cfg = compose("train", ["logger=wandb", "experiment=digits_baselines"])
    assert cfg.logger.wandb.group == "digits_baselines" and cfg.logger.wandb.job_type == "train"
    monkeypatch.setenv(SWEEP_SUFFIX_ENV, "/2025-01-31/12-00-00")
    assert cfg.logger.wandb.group == "digits_baselines/2025-01-31/12-00-00"


@pytest.mark.slow
def test_real_certify_sweep_compares_and_groups_in_wandb(trained_digits, tmp_path):
    """certify.py -m over certify.n: the sweep folder goes through compare, labelled certify.n=...; each job's
    W&B run joins the group of the training run it certifies, named after that run and its own settings."""
    sweep = tmp_path / "2025-01-31" / "12-00-00"
    run_script("certify.py", "-m", f"ckpt_path={trained_digits}/checkpoints/last.ckpt", "certify=fast",
               "certify.max=6", "certify.n0=32", "certify.n=200,300,400", "certify.progress=false", "logger=wandb",
               f"hydra.sweep.dir={sweep}")
    result = compare([sweep])
    assert list(result.table["run"]) == ["certify.n=200", "certify.n=300", "certify.n=400"]
    for job in ("0", "1", "2"):
        (summary,) = expected_rows(sweep / job / "certify.tsv", result.radii).values()
        assert_row_matches(result.table.iloc[int(job)], summary, result.radii)
    (trained,) = offline_runs(trained_digits)
    for job, n in (("0", 200), ("1", 300), ("2", 400)):
        (run,) = offline_runs(sweep / job)
        assert run["group"] == trained["group"] == "adhoc"
        assert run["name"] == f"{trained['name']} / fixed sigma=0.25 (n={n}, alpha=0.001)"


# ---------------------------------------------------------------------------------------- experiment configs


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.fixture
def fixture_roots(tmp_path):
    write_cifar10(tmp_path / "cifar", per_batch=3, n_test=2)
    write_image_folder(tmp_path / "imagenet", classes=("n01", "n02"), splits={"train": 100, "val": 1}, size=(8, 8))
    return {"insta_rs.data.CIFAR10": tmp_path / "cifar", "insta_rs.data.ImageNet": tmp_path / "imagenet"}


def sweeper_params(config_name: str, overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
            return OmegaConf.to_container(cfg.hydra.sweeper.params)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("name,dataset,model,skip", [("cifar10_paper", "cifar10", "cifar_resnet110", 20),
                                                     ("imagenet_paper", "imagenet", "resnet50", 100)])
def test_paper_experiments_compose_and_instantiate(compose, fixture_roots, name, dataset, model, skip):
    cfg = compose("train", [f"experiment={name}"])
    target = cfg.dataset._target_
    small = {"val_size": 2} if target == "insta_rs.data.CIFAR10" else {}
    overrides = [f"experiment={name}", f"dataset.root={fixture_roots[target]}",
                 *(f"dataset.{k}={v}" for k, v in small.items())]
    cfg = compose("train", overrides)
    assert cfg.experiment_name == name and cfg.trainer.accelerator == "gpu"
    assert cfg.model == compose("train", [f"model={model}"]).model
    source = instantiate(cfg.dataset)
    info = source.info
    net = instantiate(cfg.model, num_classes=info.num_classes, input_shape=tuple(info.input_shape),
                      mean=tuple(info.mean), std=tuple(info.std))
    x, y, _ = source.split("test")[0]
    assert net(x.unsqueeze(0)).shape == (1, info.num_classes)
    settings = instantiate(cfg.train, _convert_="all")
    # Cohen et al.'s schedule: 90 epochs, lr 0.1 divided by 10 every 30, batch 400, weight decay 1e-4
    assert (settings.epochs, settings.lr, settings.lr_schedule, settings.lr_step_size, settings.lr_gamma) == \
        (90, 0.1, "step", 30, 0.1)
    assert (settings.batch_size, settings.weight_decay, settings.momentum) == (400, 1e-4, 0.9)
    assert type(settings) is TrainSettings and type(settings.loss) is GaussianAugmentation
    assert sweeper_params("train", [f"experiment={name}"]) == {"train.sigma": "0.25,0.5,1.0"}
    # the baselines are one override away, and keep the protocol's schedule
    for loss in ("consistency", "macer"):
        cfg = compose("train", [f"experiment={name}", f"train/loss={loss}"])
        assert cfg.train.loss._target_ == f"insta_rs.losses.{LOSS_CLASSES[loss]}" and cfg.train.epochs == 90
    # certification: every skip-th test input, n = 100,000, alpha = 0.001, at the trained sigma
    cert = compose("certify", [f"experiment={name}_certify", "ckpt_path=x.ckpt"])
    assert (cert.certify.n0, cert.certify.n, cert.certify.alpha, cert.certify.skip) == (100, 100_000, 0.001, skip)
    assert cert.certify.split == "test" and cert.certify.max is None and cert.trainer.accelerator == "gpu"
    assert cert.sigma_search._target_ == "insta_rs.search.base.FixedSigma" and cert.sigma_search.sigma is None
    assert cert.get("dataset") is None  # the checkpoint's data set
    assert cert.experiment_name == name


def test_digits_baselines_sweeps_the_training_methods(compose):
    cfg = compose("train", ["experiment=digits_baselines"])
    assert cfg.dataset._target_ == "insta_rs.data.Digits" and cfg.experiment_name == "digits_baselines"
    assert sweeper_params("train", ["experiment=digits_baselines"]) == {"train": "gaussian,consistency,macer,insta_rs"}
    for train in ("gaussian", "consistency", "macer"):
        cfg = compose("train", ["experiment=digits_baselines", f"train={train}"])
        assert cfg.train.loss._target_ == f"insta_rs.losses.{LOSS_CLASSES[train]}" and cfg.train.lr == 0.05
        info = instantiate(cfg.dataset).info
        assert info.num_classes == 10


@pytest.mark.parametrize("experiment", experiments())
def test_every_experiment_composes_with_its_entry_point(compose, experiment):
    if experiment.endswith("_certify"):
        cfg = compose("certify", [f"experiment={experiment}", "ckpt_path=x.ckpt"])
        assert cfg.certify.n >= 1
    else:
        cfg = compose("train", [f"experiment={experiment}"])
        assert isinstance(instantiate(cfg.train, _convert_="all"), TrainSettings)


def test_the_envelope_is_the_per_radius_maximum_of_the_sound_fixed_sigma_rows(tmp_path, capsys):
    # small: correct at radii 0.3, 0.3, 0.3, wrong; large: correct at 1.2, abstain, abstain, abstain.
    # acc@0: small 3/4, large 1/4 -> 0.75 (small); acc@0.5: small 0, large 1/4 -> 0.25 (large); acc@1.5: 0 both.
    small = tmp_path / "small.tsv"
    small.write_text(HEADER + "".join(f"{i}\t1\t{1 if i < 3 else 2}\t0.3\t{int(i < 3)}\t1.0\t0.25\t0.9\tsound\t0\t0\n"
                                      for i in range(4)))
    large = tmp_path / "large.tsv"
    large.write_text(HEADER + "0\t1\t1\t1.2\t1\t1.0\t1.0\t0.9\tsound\t0\t0\n"
                     + "".join(f"{i}\t1\t-1\t0.0\t0\t1.0\t1.0\t0.5\tsound\t0\t0\n" for i in (1, 2, 3)))
    searched = tmp_path / "searched.tsv"  # rows of an instance-wise rule: never part of the envelope
    searched.write_text(HEADER + "".join(f"{i}\t1\t1\t{2.0 + i}\t1\t1.0\t{0.3 + i}\t0.9\tinstance\t0\t0\n"
                                         for i in range(4)))
    radii = (0, 0.25, 0.5, 1.0, 1.5)
    result = compare([small, large, searched], radii=radii, envelope=True)
    row = result.table[result.table["run"] == analysis.ENVELOPE_LABEL].iloc[0]
    assert row["guarantee"] == "sound"
    assert [row[f"acc@{r:g}"] for r in radii] == pytest.approx([0.75, 0.75, 0.25, 0.25, 0.0])
    per_run = {label: [result.table[result.table["run"] == label].iloc[0][f"acc@{r:g}"] for r in radii]
               for label in ("small", "large")}
    assert [row[f"acc@{r:g}"] for r in radii] == pytest.approx(np.max([per_run["small"], per_run["large"]], axis=0))
    # among the sound rows, before the instance row; the note names the run behind each value
    assert list(result.table["guarantee"]) == ["sound", "sound", "sound", "instance", analysis.HEADROOM_GUARANTEE]
    # the headroom: per input the best correct radius of small and large: 1.2, 0.3, 0.3, none (input 3 is
    # wrong in small and abstains in large); the instance-wise rows never enter it
    headroom = result.table[result.table["run"] == analysis.HEADROOM_LABEL].iloc[0]
    assert [headroom[f"acc@{r:g}"] for r in radii] == pytest.approx([0.75, 0.75, 0.25, 0.25, 0.0])
    assert headroom["acr"] == pytest.approx((1.2 + 0.3 + 0.3) / 4) and headroom["rows"] == 4
    assert headroom["source"] == f"per-input best of {small}, {large}"
    note = [n for n in result.notes if n.startswith(analysis.ENVELOPE_LABEL)][0]
    assert "r=0 small" in note and "r=0.5 large" in note and "searched" not in note.split("from:")[1]
    # the dashed curve is the pointwise maximum of the two fixed-sigma curves
    grid, envelope = result.curves[f"{analysis.ENVELOPE_LABEL} (sound)"]
    small_curve, large_curve = result.curves["small: sigma=0.25 (sound)"][1], result.curves["large: sigma=1 (sound)"][1]
    assert envelope == pytest.approx(np.maximum(small_curve, large_curve))
    assert row["source"] == f"envelope of {small}, {large}"
    assert main([str(small), str(large), "--envelope", "--out", str(tmp_path / "out")]) == 0
    assert "from: r=0 small" in (tmp_path / "out" / "compare.md").read_text()
    assert analysis.HEADROOM_LABEL in (tmp_path / "out" / "compare.md").read_text()
    assert main([str(searched), "--envelope"]) == 1  # no fixed-sigma run to take it over
    assert "--envelope" in capsys.readouterr().err


def test_the_headroom_takes_each_inputs_best_certificate_on_the_common_inputs():
    # a: right at 0.5 on input 0, wrong on 1, right at 0.1 on 2; b: wrong on 0, right at 0.8 on 1, right at 0.4
    # on 2, and an input (7) that a did not certify: left out. Per input: 0.5, 0.8, 0.4 -> all three correct.
    a = pd.DataFrame({"idx": [0, 1, 2], "radius": [0.5, 0.9, 0.1], "correct": [1, 0, 1]})
    b = pd.DataFrame({"idx": [0, 1, 2, 7], "radius": [2.0, 0.8, 0.4, 3.0], "correct": [0, 1, 1, 1]})
    rows = analysis.per_input_best_rows([("a", a), ("b", b)])
    assert rows["idx"].tolist() == [0, 1, 2]
    assert rows["radius"].tolist() == pytest.approx([0.5, 0.8, 0.4]) and rows["correct"].tolist() == [1, 1, 1]
    record = analysis.per_input_best([("a", a), ("b", b)], (0, 0.45, 0.6, 1.0))
    assert [record[f"acc@{r:g}"] for r in (0, 0.45, 0.6, 1.0)] == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    # a wrong row's radius never counts, even when it is the largest
    assert record["acr"] == pytest.approx((0.5 + 0.8 + 0.4) / 3)
    # every run wrong on an input: that input is wrong with radius 0
    none = analysis.per_input_best_rows([("a", a.assign(correct=0))])
    assert none["correct"].tolist() == [0, 0, 0] and none["radius"].tolist() == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------- intervals and differences


def hand_tsv(path: Path, correct_radius: dict[int, float], inputs=range(20), sigma="0.25", guarantee="sound") -> Path:
    """A certification file on ``inputs``: correct with the given radius on the inputs of ``correct_radius``,
    abstaining on the others; ``sigma`` a number (one sigma: a fixed-sigma file) or "vary" (one per input)."""
    lines = [HEADER.rstrip("\n")]
    for i in inputs:
        right = i in correct_radius
        s = f"{0.1 + 0.01 * i:g}" if sigma == "vary" else sigma
        lines.append(f"{i}\t1\t{1 if right else -1}\t{correct_radius.get(i, 0.0)}\t{int(right)}\t1.0\t{s}\t0.9"
                     f"\t{guarantee}\t0\t0")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_differences_from_the_envelope_recompute_it_in_every_resample(tmp_path, capsys):
    """Two fixed-sigma runs that tie at r = 0 (10 of 20 inputs each, different ones); a selector right on 11:
    its plain difference from the envelope is +0.05, but its interval includes 0 (a tie). A row right on all 20
    differs by +0.5 with an interval above 0 (marked). The difference interval is the bootstrap of the row minus
    the maximum of the two runs taken in each resample: never above the one against either run alone."""
    low = hand_tsv(tmp_path / "low.tsv", {i: 0.3 for i in range(10)})
    high = hand_tsv(tmp_path / "high.tsv", {i: 0.8 for i in range(10, 20)}, sigma="0.5")
    selector = hand_tsv(tmp_path / "selector.tsv", {**{i: 0.3 for i in range(10)}, 10: 0.8}, sigma="vary")
    best = hand_tsv(tmp_path / "best.tsv", {i: 0.6 for i in range(20)}, sigma="vary")
    radii = (0.0, 0.5)
    result = compare([low, high, selector, best], radii=radii, envelope=True)
    table = result.table.set_index("run")
    row = table.loc["selector"]
    assert row["d_acc@0"] == pytest.approx(0.05) and row["d_acc@0_lo"] < 0 < row["d_acc@0_hi"]
    assert row["pairing"] == "paired, 20 inputs" and row["paired_inputs"] == 20
    assert table.loc["best", "d_acc@0"] == pytest.approx(0.5) and table.loc["best", "d_acc@0_lo"] > 0
    # the same numbers from the statistics module, on the inputs aligned by hand (columns: acc@0, acc@0.5, clean, ACR)
    frames = [analysis.read_certification(p) for p in (selector, low, high)]
    values = [analysis.per_input_matrix(df, radii)[1] for df in frames]
    difference, lo, hi = intervals.envelope_difference(values[0], values[1:])
    assert [row["d_acc@0"], row["d_acc@0_lo"], row["d_acc@0_hi"]] == pytest.approx([difference[0], lo[0], hi[0]])
    assert [row["d_acr"], row["d_acr_lo"], row["d_acr_hi"]] == pytest.approx([difference[-1], lo[-1], hi[-1]])
    for member in values[1:]:  # against one run alone the interval sits higher: the maximum is >= each run
        _, lo_one, hi_one = intervals.paired_difference(values[0], member)
        assert (lo <= lo_one + 1e-12).all() and (hi <= hi_one + 1e-12).all()
    markdown = result.markdown
    assert "Differences from the envelope (best fixed sigma), recomputed in every resample" in markdown
    (line,) = [line for line in markdown.splitlines() if line.startswith("| selector | sound | paired, 20 inputs")]
    assert "| tie +0.050 [" in line
    (line,) = [line for line in markdown.splitlines() if line.startswith("| best | sound | paired")]
    assert "| **+0.500 [" in line
    # the envelope's own cells carry intervals too: the Bonferroni union of the runs' exact intervals
    envelope = table.loc[analysis.ENVELOPE_LABEL]
    expected = intervals.envelope_interval([[10], [10]], [20, 20])
    assert [envelope["acc@0_lo"], envelope["acc@0_hi"]] == pytest.approx([expected[0][0], expected[1][0]])


def test_reference_row_pairing_and_unpaired_rows(tmp_path, capsys):
    """--reference picks the row; rows on the same inputs are paired, rows sharing most inputs are paired on the
    common ones (said), rows on other inputs are compared unpaired (said)."""
    a = hand_tsv(tmp_path / "a.tsv", {i: 0.5 for i in range(12)})
    b = hand_tsv(tmp_path / "b.tsv", {i: 0.5 for i in range(8)})
    overlap = hand_tsv(tmp_path / "overlap.tsv", {i: 0.5 for i in range(4, 14)}, inputs=range(4, 24))
    other = hand_tsv(tmp_path / "other.tsv", {i: 0.5 for i in range(100, 105)}, inputs=range(100, 110))
    subset = hand_tsv(tmp_path / "subset.tsv", {i: 0.5 for i in range(5)}, inputs=range(10))  # an interrupted run
    assert main([str(a), str(b), str(overlap), str(other), str(subset), "--reference", "b", "--radii", "0,0.25"]) == 0
    printed = capsys.readouterr().out
    assert "Differences from b (sound)" in printed
    rows = {line.split(" | ")[0][2:]: line for line in printed.splitlines() if " | sound | " in line and "paired" in line}
    # 12 - 8 of 20 right at radius 0.5: dACR +0.1, dacc +0.2, every resample above 0
    assert "| paired, 20 inputs | **+0.100 [" in rows["a"] and rows["a"].split(" | ")[-1].startswith("**+0.200 [")
    assert "paired on the 16 common inputs (of 20, 20)" in rows["overlap"]
    assert "unpaired: different inputs (10 vs 20)" in rows["other"]
    assert "paired on the 10 common inputs (of 10, 20)" in rows["subset"]
    result = compare([a, b, other], radii=(0.0,))
    assert result.reference == "a (sound)"  # by default the first row
    row = result.table.set_index("run").loc["other"]
    _, lo, hi = intervals.unpaired_difference(analysis.per_input_matrix(analysis.read_certification(other), (0.0,))[1],
                                              analysis.per_input_matrix(analysis.read_certification(a), (0.0,))[1])
    assert [row["d_acc@0_lo"], row["d_acc@0_hi"]] == pytest.approx([lo[0], hi[0]])
    assert pd.isna(row["paired_inputs"])


def test_sample_size_advice_names_the_widest_interval(tmp_path, capsys):
    a = hand_tsv(tmp_path / "a.tsv", {i: 0.5 for i in range(10)})  # 10 of 20 at r = 0: the widest interval
    b = hand_tsv(tmp_path / "b.tsv", {i: 0.5 for i in range(19)})
    assert main([str(a), str(b), "--radii", "0,1"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Resolution:")]
    needed = intervals.inputs_to_halve_binomial(10, 20)
    assert "the widest interval is acc@0 of a (sound)" in line and f"about {needed} inputs would halve it" in line


def test_instance_curves_are_drawn_apart_and_never_called_certified(tmp_path):
    """compare.png: the instance curve dotted with a grey band, under its own legend heading; sound curves solid;
    the title and the y axis do not call the figure certified accuracy; the table's note says instance rows are
    not certificates."""
    sound = hand_tsv(tmp_path / "fixed.tsv", {i: 0.5 for i in range(12)})
    searched = hand_tsv(tmp_path / "search.tsv", {i: 0.9 for i in range(15)}, sigma="vary", guarantee="instance")
    result = compare([sound, searched], radii=(0.0, 0.5))
    assert analysis.INSTANCE_NOTE in result.markdown
    fig = analysis.certified_accuracy_figure(result.curves, guarantees=result.guarantees, bands=result.bands)
    (ax,) = fig.axes
    styles = {line.get_label(): line.get_linestyle() for line in ax.lines}
    instance = [label for label, g in result.guarantees.items() if g == "instance"]
    certified = [label for label, g in result.guarantees.items() if g == "sound"]
    assert instance and certified
    assert all(styles[label] == ":" for label in instance) and all(styles[label] == "-" for label in certified)
    bands = {c.get_label(): c.get_facecolor()[0][:3] for c in ax.collections}
    assert all(tuple(bands[f"_band {label}"]) == pytest.approx((0.5, 0.5, 0.5)) for label in instance)
    assert all(tuple(bands[f"_band {label}"]) != pytest.approx((0.5, 0.5, 0.5)) for label in certified)
    assert "certified accuracy" not in ax.get_ylabel() and "not certificates" in ax.get_title()
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    heading = legend.index("not certificates (instance-wise, or using the labels):")
    assert legend.index(instance[0]) > heading > legend.index(certified[0])
    # sound curves alone: certified accuracy, solid
    alone = compare([sound], radii=(0.0,))
    fig = analysis.certified_accuracy_figure(alone.curves, guarantees=alone.guarantees)
    assert fig.axes[0].get_ylabel() == "certified accuracy" and fig.axes[0].lines[0].get_linestyle() == "-"


def test_compare_takes_a_predict_folder(tmp_path, capsys):
    run = tmp_path / "predict_run"
    run.mkdir()
    (run / "predict.tsv").write_text("idx\tlabel\tpredict\tcorrect\ttime\tsigma\tguarantee\n"
                                     + "".join(f"{i}\t1\t{1 if i < 3 else -1}\t{int(i < 3)}\t0.5\t0.25\tsound\n"
                                               for i in range(4)))
    out = tmp_path / "out"
    assert main([str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    exact = binomtest(3, 4).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = intervals.round_outward(exact.low, exact.high, 3)
    assert f"| predict_run | sound | 4 | 0.750 [{lo:.3f}, {hi:.3f}] |" in printed
    csv = pd.read_csv(out / "compare.csv")
    assert list(csv["mode"]) == ["predict"] and csv["accuracy"][0] == 0.75
    assert not (out / "compare.png").exists()  # no radius, no curve


def test_wandb_interval_scalars_sit_beside_the_numbers():
    from insta_rs.tracking import interval_scalars

    summary = analysis.summarize(pd.DataFrame(
        {"idx": range(4), "label": 1, "predict": [1, 1, -1, 2], "radius": [0.3, 0.6, 0.0, 0.2],
         "correct": [1, 1, 0, 0], "guarantee": "sound"}), (0.0, 0.5))
    scalars = interval_scalars(summary, "cert")
    assert scalars["cert/acc@0.5_lo"] == summary["intervals"]["certified_accuracy"][0.5][0]
    assert scalars["cert/acc@0_hi"] == summary["intervals"]["certified_accuracy"][0.0][1]
    assert [scalars["cert/acr_lo"], scalars["cert/acr_hi"]] == summary["intervals"]["acr"]
    assert {"cert/clean_accuracy_lo", "cert/abstain_rate_hi"} <= set(scalars)
    assert interval_scalars({"intervals": None}, "cert") == {}
