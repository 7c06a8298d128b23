"""Every bad input of issue 7 through the real entry points: one line on stderr naming the setting and
what is accepted, exit code 2 for configuration and 1 otherwise, and nothing left that looks complete.
(test_end_to_end.py covers a missing checkpoint, certify.n=0, certify.alpha=1.5, sigma_search.sigma=-0.5,
an unknown dataset and a skip larger than the split.)"""

from __future__ import annotations

import pytest
import torch

from conftest import run_script

CERTIFY = ["certify=fast", "certify.n0=16", "certify.n=100", "certify.max=2", "certify.progress=false", "logger=none"]


def assert_one_line(result, code: int, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, f"exit {result.returncode}, expected {code}: {result.stderr[-2000:]}"
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{result.stderr[-2000:]}"
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


@pytest.mark.parametrize("overrides,code,words", [
    (["train.sigma=-1"], 2, ["train.sigma"]),
    (["train.sigma=nan"], 2, ["train.sigma"]),
    (["model=nosuchmodel"], 2, ["model", "small_cnn"]),
    (["train=insta_rs", "train.stage1_epochs=0", "train.sigma_min=2.0"], 2, ["train.sigma_max"]),
    (["hydra/launcher=ray"], 2, ["hydra/launcher", "joblib"]),
    (["dataset=cifar10", "dataset.root=/nonexistent/cifar"], 1,
     ["dataset.root=/nonexistent/cifar", "dataset.download="]),
    (["model=resnet50", "dataset=digits"], 2, ["resnet50"]),
])
def test_train_bad_input(tmp_path, overrides, code, words):
    run_dir = tmp_path / "run"
    result = run_script("train.py", f"hydra.run.dir={run_dir}", "debug=fast", *overrides, check=False)
    assert_one_line(result, code, *words)
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()


def _truncated(path, source):
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _foreign(path, source):
    torch.save({"weights": torch.zeros(3)}, path)


def _random_bytes(path, source):
    path.write_bytes(bytes(range(256)) * 40)


@pytest.mark.parametrize("make", [_truncated, _foreign, _random_bytes])
def test_certify_refuses_a_broken_checkpoint(trained_digits, tmp_path, make):
    ckpt = tmp_path / "model.ckpt"
    make(ckpt, trained_digits / "checkpoints" / "last.ckpt")
    run_dir = tmp_path / "cert"
    result = run_script("certify.py", f"ckpt_path={ckpt}", f"hydra.run.dir={run_dir}", *CERTIFY, check=False)
    assert_one_line(result, 1, "ckpt_path")
    assert not (run_dir / "certify.tsv").exists() and not (run_dir / "summary.json").exists()


@pytest.mark.parametrize("overrides,words", [
    (["certify.n0=0"], ["certify.n0"]),
    (["certify.max=0"], ["certify.max"]),
    (["sigma_search.sigma=nan"], ["sigma"]),
    (["sigma_search=insta_rs", "sigma_search.starts=[]"], ["starts"]),
    (["sigma_search=insta_rs", "sigma_search.sigma_min=3.0"], ["sigma_m"]),
    (["sigma_search=grid", "sigma_search.p0=0.4"], ["p0"]),
])
def test_certify_bad_config(trained_digits, tmp_path, overrides, words):
    run_dir = tmp_path / "cert"
    result = run_script("certify.py", f"ckpt_path={trained_digits}/checkpoints/last.ckpt", f"hydra.run.dir={run_dir}",
                        *CERTIFY, *overrides, check=False)
    assert_one_line(result, 2, *words)
    assert not (run_dir / "summary.json").exists()


def test_certify_with_another_data_sets_class_count(trained_digits, tmp_path):
    result = run_script("certify.py", f"ckpt_path={trained_digits}/checkpoints/last.ckpt", f"hydra.run.dir={tmp_path}",
                        *CERTIFY, "dataset=synthetic", "dataset.num_classes=3", check=False)
    assert_one_line(result, 1, "classes")


def test_a_bracketed_sigma_list_under_multirun_warns_that_it_is_one_job(capsys, monkeypatch):
    from insta_rs.cli import warn_lists_under_multirun

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    warn_lists_under_multirun(["-m", "train.sigma=[0.12,0.25]", "sigma_search.levels=[1.0,0.5]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one job" in err[0] and "train.sigma=0.12,0.25" in err[0]
    warn_lists_under_multirun(["train.sigma=[0.12,0.25]"])  # no -m: a list is what the user meant
    warn_lists_under_multirun(["-m", "train.sigma=0.12,0.25"])  # a real sweep
    assert capsys.readouterr().err == ""


def test_n0_above_n_is_a_warning_with_full_keys(capsys):
    from insta_rs import cli
    from insta_rs.certification import CertifySettings

    built = cli.settings(CertifySettings, {"n0": 5000, "n": 1000}, "certify")
    assert (built.n0, built.n) == (5000, 1000)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: certify.n0=5000 is more than certify.n=1000")
    cli.settings(CertifySettings, {"n0": 100, "n": 1000}, "certify")
    assert capsys.readouterr().err == ""
