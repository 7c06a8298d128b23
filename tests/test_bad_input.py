"""Bad input through the real entry points: train.py and certify.py run as a user runs them (docs/errors.md).

Every case must print ONE line on stderr that names the setting and the value (and, for a configuration
error, what is accepted), exit with 2 for configuration errors and 1 for anything else, with no traceback, and
leave nothing behind: a refusal found by the checks (``cli.CheckBeforeRun``, before Hydra makes any folder)
leaves no run folder at all and prints no config; an error met later leaves no empty run folder and nothing
that looks finished (no checkpoint from train.py; no certify.tsv, summary.json or table.md from certify.py).
(tests/test_end_to_end.py also covers: a missing checkpoint, certify.n=0, certify.alpha=1.5,
sigma_search.sigma=-0.5, an unknown dataset for certify, certify.skip past the split, a checkpoint cut at
5000 bytes, train.lr_schedule=triangle.)

Exit codes: a setting that names data or a checkpoint that is not there, or data of another shape than the
model's, is a configuration error (2); a file that is there but cannot be read (truncated, foreign, corrupt) is
not (1).

Decisions on what is truly impossible:
- train.sigma=0 is accepted (a noise-free baseline, documented in conf/train); certification needs sigma > 0.
- cifar_resnet takes any channel count and size (its first conv is built for the data), small_cnn any
  channel count with H, W >= 4; resnet50 (torchvision's stem) takes 3-channel images only.
- certifying a checkpoint on data of another channel count than it was trained on cannot work (the first
  layer's weights do not fit); another height/width is accepted (adaptive pooling).

The quick subset (``-m 'not slow'``) keeps the cases that guard a distinct code path; the others are marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import CONF, ROOT, run_script

CERTIFY = ["certify=fast", "certify.n0=16", "certify.n=100", "certify.max=2", "certify.progress=false", "logger=none"]
CONFIG_HEADER = "config (print_config=false hides it"  # the first line of the printed config tree
slow = pytest.mark.slow


def needs_config(choice: str):
    """Skip when a config-group choice (e.g. sigma_search/insta_rs) does not exist yet."""
    if not (CONF / f"{choice}.yaml").is_file():
        pytest.skip(f"conf/{choice}.yaml does not exist yet")


def assert_one_line(result: subprocess.CompletedProcess, code: int, words) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, f"exit {result.returncode}, expected {code}; stderr:\n{result.stderr[-3000:]}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr[-3000:]}"
    for word in words:
        assert word in lines[0], f"{word!r} is not in the message {lines[0]!r}"
    return lines[0]


def assert_refused_before_running(result: subprocess.CompletedProcess, run_dir: Path) -> None:
    """A refusal of the checks: no run folder (not even .hydra/ or an empty log), no config tree printed."""
    assert not run_dir.exists(), f"a refused run left {sorted(p.name for p in run_dir.iterdir())} in {run_dir}"
    assert CONFIG_HEADER not in result.stdout, "the config was printed before the refusal"


def assert_no_certification(run_dir: Path) -> None:
    left = [name for name in ("certify.tsv", "summary.json", "table.md") if (run_dir / name).exists()]
    assert not left, f"a failed certification left {left}"


# -- train.py ------------------------------------------------------------------------------------------------

def wrong_layout(tmp_path: Path) -> Path:
    """A data root that exists but holds something else: a stray file and an empty sub-folder."""
    root = tmp_path / "data"
    (root / "misc").mkdir(parents=True)
    (root / "README.txt").write_text("not a data set")
    return root


def image_folder_without_classes(tmp_path: Path) -> Path:
    """<root>/train holds an image file directly instead of <root>/train/<class>/<image>."""
    root = tmp_path / "images"
    (root / "train").mkdir(parents=True)
    (root / "train" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return root


TRAIN_CASES = [
    # (overrides, exit code, words the one line must hold); "{root}" is replaced by a prepared folder
    pytest.param(["train.sigma=-1"], 2, ["train.sigma", "-1", "expected"], id="sigma-negative"),
    pytest.param(["train.sigma=nan"], 2, ["train.sigma", "nan", "expected"], id="sigma-nan", marks=slow),
    pytest.param(["train.sigma=inf"], 2, ["train.sigma", "inf", "expected"], id="sigma-inf", marks=slow),
    pytest.param(["+sigma=0.5"], 2, ["+sigma=0.5", "not a setting", "train.sigma=0.5"], id="plus-sigma"),
    pytest.param(["+model.depth=3"], 2, ["model.depth=3", "SmallCNN", "accepted: "], id="plus-model-argument",
                 marks=slow),
    pytest.param(["dataset=nosuchdata"], 2, ["dataset", "nosuchdata", "digits"], id="unknown-dataset"),
    pytest.param(["model=nosuchmodel"], 2, ["model", "nosuchmodel", "small_cnn"], id="unknown-model"),
    pytest.param(["train=insta_rs", "train.stage1_epochs=0", "train.sigma0=0.5", "train.sigma_min=1.5",
                  "train.sigma_max=0.5"], 2, ["train.sigma_max", "0.5", "train.sigma_min"], id="sigma-min-above-max",
                 marks=slow),
    pytest.param(["train=insta_rs", "train.stage1_epochs=0", "train.sigma_min=0"], 2, ["train.sigma_min", "0"],
                 id="sigma-min-zero", marks=slow),
    pytest.param(["hydra/launcher=nosuchlauncher"], 2, ["hydra/launcher", "nosuchlauncher", "joblib"],
                 id="unknown-launcher"),
    pytest.param(["dataset=cifar10", "dataset.root={root}"], 2, ["dataset.root", "{root}", "cifar-10-batches-py"],
                 id="cifar10-without-local-data"),
    pytest.param(["dataset=mnist", "dataset.root={root}"], 2, ["dataset.root", "{root}", "MNIST/raw"],
                 id="mnist-wrong-layout", marks=slow),
    pytest.param(["dataset=image_folder", "dataset.root={images}"], 2,
                 ["dataset.train_dir=train", "{images}", "class folders"],
                 id="image-folder-no-classes", marks=slow),
    pytest.param(["model=resnet50"], 2, ["model=resnet50", "(1, 8, 8)", "3-channel"], id="resnet50-on-digits"),
    pytest.param(["dataset=synthetic", "dataset.input_shape=[1,2,2]"], 2, ["small_cnn", "(1, 2, 2)", "at least 4"],
                 id="small-cnn-on-2x2", marks=slow),
    pytest.param(["ckpt_path={foreign}"], 1, ["ckpt_path", "{foreign}", "train.py"], id="resume-foreign", marks=slow),
    pytest.param(["ckpt_path={missing}"], 2, ["ckpt_path", "{missing}", "does not exist"], id="resume-missing",
                 marks=slow),
]


@pytest.mark.parametrize("overrides,code,words", TRAIN_CASES)
def test_train_refuses(tmp_path, overrides, code, words):
    places = {"{root}": str(wrong_layout(tmp_path)), "{images}": str(image_folder_without_classes(tmp_path)),
              "{foreign}": str(tmp_path / "foreign.ckpt"), "{missing}": str(tmp_path / "missing.ckpt")}
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, places["{foreign}"])  # a Lightning-like foreign file

    def fill(text: str) -> str:
        for key, value in places.items():
            text = text.replace(key, value)
        return text

    run_dir = tmp_path / "run"
    result = run_script("train.py", f"hydra.run.dir={run_dir}", "debug=fast", "logger=none",
                        *map(fill, overrides), check=False)
    assert_one_line(result, code, list(map(fill, words)))
    assert_refused_before_running(result, run_dir)


# -- a launcher plugin that is not installed -------------------------------------------------------------------

def run_hiding_modules(script: str, hidden: list[str], *overrides: str) -> subprocess.CompletedProcess:
    """Run ``script`` as __main__ in a Python where the ``hidden`` modules cannot be imported (None in
    sys.modules: importlib.util.find_spec then answers None, or raises for a hidden parent package), as
    when the plugin was never installed."""
    code = ("import runpy, sys\n"
            f"for name in {hidden!r}: sys.modules[name] = None\n"
            f"sys.argv = [{str(ROOT / script)!r}, *sys.argv[1:]]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *overrides], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("launcher,hidden,package", [
    ("joblib", ["hydra_plugins.hydra_joblib_launcher"], "hydra-joblib-launcher"),
    ("submitit_slurm", ["hydra_plugins"], "hydra-submitit-launcher"),  # no plugin at all: the namespace is missing
])
def test_a_launcher_that_is_not_installed(tmp_path, launcher, hidden, package):
    result = run_hiding_modules("train.py", hidden, "-m", f"hydra/launcher={launcher}", "debug=fast", "logger=none",
                                f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert_one_line(result, 2, [f"hydra/launcher={launcher!r}", f"pip install {package}"])
    assert not (tmp_path / "sweep").exists()


def test_an_installed_launcher_is_left_to_hydra():
    """With the plugin importable (as in this environment) the check lets the override through to Hydra."""
    from insta_rs.cli import check_group_choices, module_installed

    for launcher, module in (("joblib", "hydra_plugins.hydra_joblib_launcher"),
                             ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher")):
        if not module_installed(module):
            pytest.skip(f"{module} is not installed here")
        check_group_choices([f"hydra/launcher={launcher}"], CONF)  # no SystemExit


# -- certify.py ----------------------------------------------------------------------------------------------

def needs(choice):
    return lambda: needs_config(choice)


CERTIFY_CASES = [
    # (overrides, exit code, words, precondition)
    pytest.param(["+sigma=0.5"], 2, ["+sigma=0.5", "not a setting", "sigma_search.sigma=0.5", "train.sigma"], None,
                 id="plus-sigma"),
    pytest.param(["+certify.foo=1"], 2, ["certify.foo=1", "not a setting of certify", "accepted: alpha"], None,
                 id="plus-certify-unknown-key"),
    pytest.param(["+certify.nn=1"], 2, ["certify.nn=1", "did you mean certify.n?"], None, id="plus-certify-near-key",
                 marks=slow),
    pytest.param(["++sigma_search.levels=[0.5]"], 2, ["sigma_search.levels", "FixedSigma", "accepted: "], None,
                 id="plus-argument-the-method-lacks", marks=slow),
    pytest.param(["ckpt_path=???"], 2, ["ckpt_path is not set", "checkpoints/last.ckpt"], None, id="ckpt-path-unset"),
    pytest.param(["sigma_search.sigma=0"], 2, ["sigma_search.sigma", "0", "> 0"], None, id="sigma-zero", marks=slow),
    pytest.param(["sigma_search.sigma=nan"], 2, ["sigma", "nan", "> 0"], None, id="sigma-nan", marks=slow),
    pytest.param(["certify.alpha=0"], 2, ["certify.alpha", "0", "(0, 1)"], None, id="alpha-zero", marks=slow),
    pytest.param(["certify.alpha=1"], 2, ["certify.alpha", "1", "(0, 1)"], None, id="alpha-one", marks=slow),
    pytest.param(["certify.n0=0"], 2, ["certify.n0", "0", ">= 1"], None, id="n0-zero", marks=slow),
    pytest.param(["certify.n=-3"], 2, ["certify.n", "-3", ">= 1"], None, id="n-negative", marks=slow),
    pytest.param(["certify.max=0"], 2, ["certify.max", "0"], None, id="max-zero", marks=slow),
    pytest.param(["certify.skip=0"], 2, ["certify.skip", "0", ">= 1"], None, id="skip-zero", marks=slow),
    pytest.param(["certify.skip=100000"], 2, ["certify.skip=100000", "split's size"], None, id="skip-past-the-split",
                 marks=slow),
    pytest.param(["sigma_search=insta_rs", "sigma_search.starts=[]"], 2, ["sigma_search.starts", "[]"],
                 needs("sigma_search/insta_rs"), id="empty-starts"),
    pytest.param(["sigma_search=insta_rs", "sigma_search.sigma_min=1.0", "sigma_search.sigma_max=0.5"], 2,
                 ["sigma_search.sigma_max", "0.5"], needs("sigma_search/insta_rs"), id="search-sigma-min-above-max",
                 marks=slow),
    pytest.param(["sigma_search=insta_rs", "sigma_search.alpha_s=1.5"], 2, ["sigma_search.alpha_s", "1.5", "(0, 1)"],
                 needs("sigma_search/insta_rs"), id="search-alpha-outside", marks=slow),
    pytest.param(["sigma_search=cascade", "sigma_search.levels=[]"], 2, ["sigma_search.levels", "[]"],
                 needs("sigma_search/cascade"), id="cascade-no-levels", marks=slow),
    pytest.param(["sigma_search=grid", "sigma_search.levels=[0.5,-0.25]"], 2, ["sigma_search.levels", "-0.25"],
                 needs("sigma_search/grid"), id="grid-negative-level", marks=slow),
    pytest.param(["sigma_search=grid", "sigma_search.p0=0.4"], 2, ["sigma_search.p0", "0.4"],
                 needs("sigma_search/grid"), id="grid-p0-below-half", marks=slow),
    pytest.param(["dataset=cifar10", "dataset.root={root}"], 2, ["dataset.root", "{root}"], None,
                 id="cifar10-without-local-data", marks=slow),
    pytest.param(["dataset=synthetic", "dataset.num_classes=3"], 2, ["synthetic", "3 classes", "10"], None,
                 id="other-class-count", marks=slow),
    pytest.param(["dataset=synthetic", "dataset.num_classes=10", "dataset.input_shape=[3,8,8]"], 2,
                 ["synthetic", "3-channel", "1-channel"], None, id="other-channel-count"),
]


@pytest.mark.parametrize("overrides,code,words,precondition", CERTIFY_CASES)
def test_certify_refuses(trained_digits, tmp_path, overrides, code, words, precondition):
    if precondition:
        precondition()
    root = str(wrong_layout(tmp_path))
    overrides = [o.replace("{root}", root) for o in overrides]
    run_dir = tmp_path / "cert"
    result = run_script("certify.py", f"ckpt_path={trained_digits}/checkpoints/last.ckpt", f"hydra.run.dir={run_dir}",
                        *CERTIFY, *overrides, check=False)
    assert_one_line(result, code, [w.replace("{root}", root) for w in words])
    assert_refused_before_running(result, run_dir)


def half_of(path: Path, source: Path) -> None:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def foreign_dict(path: Path, source: Path) -> None:
    torch.save({"state_dict": torch.load(source, map_location="cpu", weights_only=True)["state_dict"]}, path)


def foreign_list(path: Path, source: Path) -> None:
    torch.save([torch.zeros(3), 1, "x"], path)


def random_bytes(path: Path, source: Path) -> None:
    path.write_bytes(bytes(torch.randint(0, 256, (8192,), generator=torch.Generator().manual_seed(0)).tolist()))


@pytest.mark.parametrize("make,words", [
    pytest.param(half_of, ["truncated"], id="half-written"),
    pytest.param(foreign_dict, ["not written by insta-rs"], id="weights-without-config", marks=slow),
    pytest.param(foreign_list, ["not written by insta-rs"], id="a-list", marks=slow),
    pytest.param(random_bytes, ["not a PyTorch checkpoint"], id="random-bytes", marks=slow),
])
def test_certify_refuses_a_broken_checkpoint(trained_digits, tmp_path, make, words):
    ckpt = tmp_path / "model.ckpt"
    make(ckpt, trained_digits / "checkpoints" / "last.ckpt")
    run_dir = tmp_path / "cert"
    result = run_script("certify.py", f"ckpt_path={ckpt}", f"hydra.run.dir={run_dir}", *CERTIFY, check=False)
    assert_one_line(result, 1, ["ckpt_path", str(ckpt), *words])
    assert_refused_before_running(result, run_dir)


# -- the default output folders and sweeps ---------------------------------------------------------------------

def test_a_refused_run_leaves_no_outputs_folder(tmp_path):
    """Without hydra.run.dir the run would go to outputs/certify/<date>/<time>/ under the working directory: a
    missing checkpoint is refused before Hydra makes any of those folders (exit 2: the setting names no file)."""
    result = run_script("certify.py", f"ckpt_path={tmp_path / 'missing.ckpt'}", *CERTIFY, cwd=tmp_path, check=False)
    assert_one_line(result, 2, ["ckpt_path", "missing.ckpt", "does not exist"])
    assert not (tmp_path / "outputs").exists() and result.stdout == ""


def test_a_sweep_with_a_bad_middle_value_runs_no_job(trained_digits, tmp_path):
    """Every job of a multirun is composed and checked before the first runs: job 1's alpha=2 stops the sweep
    before job 0 runs, in one line naming the job and its value, and no sweep folder is made."""
    sweep = tmp_path / "sweep"
    result = run_script("certify.py", "-m", f"ckpt_path={trained_digits}/checkpoints/last.ckpt", *CERTIFY,
                        "certify.alpha=0.001,2,0.01", f"hydra.sweep.dir={sweep}", check=False)
    assert_one_line(result, 2, ["sweep job 1 of 3", "(certify.alpha=2)", "certify.alpha=2", "(0, 1)",
                                "no job was run"])
    assert not sweep.exists() and result.stdout == ""


@slow
def test_a_training_sweep_with_a_bad_value_runs_no_job(tmp_path):
    result = run_script("train.py", "-m", "debug=fast", "logger=none", "train.sigma=0.25,-1", cwd=tmp_path,
                        check=False)
    assert_one_line(result, 2, ["sweep job 1 of 2", "train.sigma=-1", "no job was run"])
    assert not (tmp_path / "outputs").exists()


def test_empty_folders_above_a_removed_run_folder_go_too(tmp_path, monkeypatch):
    """An error met after the checks removes the run folder (if Hydra's files are all it holds) and each folder
    above it that this leaves empty, inside the working directory only."""
    from insta_rs.cli import remove_empty_parents

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "outputs" / "certify" / "2026-12-07" / "10-00-00"
    run_dir.mkdir(parents=True)
    (tmp_path / "outputs" / "train").mkdir()
    run_dir.rmdir()
    remove_empty_parents(run_dir)
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["train"]  # certify/<date>/ went, train/ stays
    (tmp_path / "outputs" / "train").rmdir()
    remove_empty_parents(tmp_path / "outputs" / "train")
    assert not (tmp_path / "outputs").exists() and tmp_path.is_dir()  # up to the working directory, not beyond


# -- the checks behind these messages, in process ------------------------------------------------------------

def test_a_settings_group_refuses_an_unknown_key_naming_the_nearest_and_the_accepted(capsys):
    from insta_rs import cli
    from insta_rs.certification import CertifySettings
    from insta_rs.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        cli.settings(CertifySettings, {"n0": 100, "alpah": 0.01}, "certify")
    message = str(error.value)
    assert message.startswith("certify.alpah=0.01 is not a setting of certify; did you mean certify.alpha?")
    assert "accepted: alpha, autocast, batch_size" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"^certify\.foo=1 is not a setting of certify \(accepted: alpha"):
        cli.settings(CertifySettings, {"foo": 1}, "certify")


def test_an_object_group_refuses_an_argument_its_target_lacks():
    from insta_rs.cli import build_group
    from insta_rs.errors import ConfigError

    spec = {"_target_": "insta_rs.search.finite_set.CascadeSigma", "levels": [0.5, 0.25], "p00": 0.6}
    with pytest.raises(ConfigError, match=r"^sigma_search\.p00=0\.6 is not an argument of .*CascadeSigma; did you "
                                          r"mean sigma_search\.p0\? \(accepted: experts, levels, p0\)"):
        build_group(spec, "sigma_search", _convert_="all")
    spec = {key: value for key, value in spec.items() if key != "p00"}
    assert build_group({**spec, "p0": 0.6}, "sigma_search", _convert_="all").levels == [0.5, 0.25]


def test_added_keys_are_refused_unless_something_takes_them(compose_with_hydra):
    """``+key=value``: refused at the top level (nothing reads it) and for an argument the object lacks; let
    through for an argument the object takes, for ``++`` of a key the config has, and for a new object's keys."""
    from insta_rs.cli import check_added_keys, task_config
    from insta_rs.errors import ConfigError

    def check(config_name, overrides):
        job = compose_with_hydra(config_name, overrides)
        check_added_keys(job, task_config(job))

    check("certify", ["ckpt_path=x.ckpt", "+trainer.detect_anomaly=false", "++seed=3",
                      "++sigma_search.sigma=0.5"])
    check("train", ["+callbacks.extra._target_=pytorch_lightning.callbacks.LearningRateMonitor",
                    "+callbacks.extra.logging_interval=epoch", "+trainer.detect_anomaly=false"])
    refused = {("certify", "+sigma=0.5"): r"^\+sigma=0\.5: sigma is not a setting .*did you mean sigma_search\.sigma",
               ("certify", "++sigmaa=1"): r"^\+\+sigmaa=1: sigmaa is not a setting",
               ("certify", "+model.width=8"): r"^\+model\.width=8: model is not a setting",
               ("certify", "+trainer.fast=1"): r"^trainer\.fast=1 is not an argument of pytorch_lightning\.Trainer",
               ("train", "+train.loss.foo=1"): r"^train\.loss\.foo=1 is not an argument of .*GaussianAugmentation "
                                               r"\(it takes none\)",
               ("train", "+model.depth=3"): r"^model\.depth=3 is not an argument of insta_rs\.models\.SmallCNN",
               ("train", "+sigma=0.5"): r"did you mean train\.sigma=0\.5"}
    for (config_name, override), pattern in refused.items():
        with pytest.raises(ConfigError, match=pattern):
            check(config_name, ["ckpt_path=x.ckpt", override] if config_name == "certify" else [override])


@pytest.fixture
def compose_with_hydra():
    """compose(config_name, overrides) -> the config with its ``hydra`` node (overrides, choices), composed
    inside an initialized Hydra (``++key`` checks compose again without the key)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from insta_rs.cli import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield lambda name, overrides: compose(name, list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()


def test_levels_the_model_was_not_trained_at_are_named_in_a_warning(capsys, monkeypatch):
    """cascade/grid/best_level on a model trained at other sigmas: one warning naming the training sigmas and the
    untrained levels; none when every level was trained, or each level has its own expert."""
    from insta_rs.cli import warn_untrained_levels

    monkeypatch.delenv("LOCAL_RANK", raising=False)

    def warned(levels, train, experts=None) -> str:
        warn_untrained_levels({"levels": levels, "experts": experts}, SimpleNamespace(config={"train": train}))
        return capsys.readouterr().err

    one = warned([1.0, 0.5, 0.25], {"sigma": 0.25}).strip().splitlines()
    assert len(one) == 1 and one[0].startswith("warning: sigma_search.levels=[1.0, 0.5, 0.25]")
    assert "train.sigma=0.25" in one[0] and "1.0, 0.5 were never trained" in one[0] and "sigma_search=fixed" in one[0]
    across = warned([1.0, 0.5, 0.25], {"sigma": [0.12, 0.25, 0.5]})
    assert "train.sigma=[0.12,0.25,0.5]" in across and "1.0 were never" in across
    assert "sigma_search.levels=[0.12,0.25,0.5]" in across
    ranged = warned([1.0, 0.5, 0.25, 0.12], {"sigma0": 0.25, "sigma_min": 0.1, "sigma_max": 0.5})
    assert "[train.sigma_min=0.1, train.sigma_max=0.5]" in ranged and "1.0 were never" in ranged
    assert warned([0.5, 0.25], {"sigma": [0.25, 0.5]}) == ""
    assert warned([0.5, 0.25], {"sigma0": 0.25, "sigma_min": 0.25, "sigma_max": 0.5}) == ""
    assert warned([1.0, 0.25], {"sigma": 0.25}, experts={1.0: "a.ckpt", 0.25: "b.ckpt"}) == ""


def test_checkpoint_helpers_name_the_mismatch(trained_digits):
    from insta_rs.checkpoints import check_data_fits, load_weights, read_checkpoint
    from insta_rs.errors import CheckpointError, DataError
    from insta_rs.models import SmallCNN

    path = trained_digits / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(path)
    check_data_fits(checkpoint, "digits", 10, (1, 8, 8), path)
    check_data_fits(checkpoint, "digits16", 10, (1, 16, 16), path)  # another size: the model takes it
    with pytest.raises(DataError, match=r"3 classes .* predicts 10") as error:
        check_data_fits(checkpoint, "synthetic", 3, (1, 8, 8), path)
    assert error.value.exit_code == 2  # the dataset= setting fixes it
    with pytest.raises(DataError, match=r"3-channel images.*trained on 1-channel"):
        check_data_fits(checkpoint, "synthetic", 10, (3, 8, 8), path)
    load_weights(SmallCNN(10, (1, 8, 8), (0.5,), (0.5,)), checkpoint, path)
    with pytest.raises(CheckpointError, match=r"do not fit .*size mismatch for features\.0\.weight") as error:
        load_weights(SmallCNN(10, (1, 8, 8), (0.5,), (0.5,), width=8), checkpoint, path)
    assert "\n" not in str(error.value) and error.value.exit_code == 1


def test_a_recorded_data_set_that_fails_names_its_dataset_key(trained_digits, tmp_path):
    """certify.py without dataset=...: the checkpoint's own data set is rebuilt inside the library, which names
    the field; the entry point's ``trained_run`` gives it the key that overrides it."""
    from insta_rs.cli import trained_run
    from insta_rs.errors import ConfigError

    checkpoint = torch.load(trained_digits / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["insta_rs"]["config"]["dataset"].update(val_fraction=0.5, test_fraction=0.6)
    path = tmp_path / "moved.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(ConfigError) as error:
        trained_run(path, None)
    message = str(error.value)
    assert message.startswith("dataset.val_fraction=0.5 is invalid") and "(dataset.test_fraction=0.6)" in message
    assert trained_run(trained_digits / "checkpoints" / "last.ckpt", None).source.info.name == "digits"


def test_a_bracketed_sigma_list_under_multirun_warns_that_it_is_one_job(capsys, monkeypatch):
    from insta_rs.cli import warn_lists_under_multirun

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    warn_lists_under_multirun(["-m", "train.sigma=[0.12,0.25]", "sigma_search.levels=[1.0,0.5]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one job" in err[0] and "train.sigma=0.12,0.25" in err[0]
    warn_lists_under_multirun(["train.sigma=[0.12,0.25]"])  # no -m: a list is what the user meant
    warn_lists_under_multirun(["-m", "train.sigma=0.12,0.25"])  # a real sweep
    assert capsys.readouterr().err == ""


def test_n0_above_n_is_a_warning_with_full_keys(capsys, monkeypatch):
    from insta_rs import cli
    from insta_rs.certification import CertifySettings

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    built = cli.settings(CertifySettings, {"n0": 5000, "n": 1000}, "certify")
    assert (built.n0, built.n) == (5000, 1000)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: certify.n0=5000 is more than certify.n=1000")
    cli.settings(CertifySettings, {"n0": 100, "n": 1000}, "certify")
    assert capsys.readouterr().err == ""
