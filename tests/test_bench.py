"""``python -m insta_rs.bench`` runs and ends with a parsable name=value line; the optional speed options
of certification (conf/certify: autocast, channels_last, compile) are off by default and, with the same
seed and options, write the same TSV twice."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from insta_rs import bench
from insta_rs.certification import Certifier
from insta_rs.models import SmallCNN
from insta_rs.search.base import FixedSigma
from insta_rs.smoothing import Smooth
from insta_rs.certification_file import CertificationLog

from conftest import ROOT, run_script


def _last_pairs(output: str) -> dict[str, str]:
    line = output.strip().splitlines()[-1]
    return bench.parse_pairs(line)


def _finite(pairs: dict[str, str], *names: str) -> list[float]:
    values = [float(pairs[name]) for name in names]
    assert all(math.isfinite(v) and v > 0 for v in values), pairs
    return values


def test_bench_certify_quick_prints_rates_and_their_ratios(capsys):
    assert bench.main(["certify", "--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    pairs = _last_pairs(out)
    a, b, c, speedup, fraction = _finite(pairs, "a_draws_per_s", "b_draws_per_s", "c_draws_per_s",
                                         "speedup_vs_naive", "fraction_of_forward")
    # the printed ratios are the ratios of the printed rates (up to the 4 digits shown)
    assert speedup == pytest.approx(a / b, rel=1e-3)
    assert fraction == pytest.approx(a / c, rel=1e-3)
    assert pairs["model"] == "small_cnn" and pairs["n"] == "256" and pairs["quick"] == "1"
    assert "(b)  naive loop" in out and "time of (a) by phase" in out
    assert out.count("mean nothing about speed") == 2  # at the top and just above the pairs


def test_bench_certify_measures_noise_threads_beside_one_thread(capsys):
    """(a) with two noise threads and split noise beside (a0), the one-thread default stream, with both phase
    shares; the rates' ratio is the printed speed-up."""
    assert bench.main(["certify", "--quick", "--threads", "1", "--noise", "split", "--noise-threads", "2",
                       "--model", "cifar_vgg", "--width", "2", "--n", "64", "--clock", "cpu"]) == 0
    out = capsys.readouterr().out
    pairs = _last_pairs(out)
    a, a0, speedup = _finite(pairs, "a_draws_per_s", "a0_draws_per_s", "speedup_noise_threads")
    assert speedup == pytest.approx(a / a0, rel=1e-3)
    for prefix in ("", "a0_"):  # wall shares of one run, whatever the rates' clock
        shares = _finite(pairs, *(f"{prefix}{phase}_share" for phase in ("noise", "shift", "forward")))
        assert sum(shares) <= 1.001
    assert (pairs["noise"], pairs["noise_threads"], pairs["width"], pairs["clock"]) == ("split", "2", "2", "cpu")
    assert "(a0) as (a), noise in 1 thread" in out and "time of (a0) by phase" in out


def test_naive_counts_equal_smooth_counts_for_a_constant_classifier():
    """An independent check of the naive loop's counting: a model that always answers class 3."""
    class Constant(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 5)
            logits[:, 3] = 1.0
            return logits

    counts = bench.naive_counts(Constant(), torch.rand(1, 4, 4), 0.5, 2345, 5, torch.device("cpu"))
    assert counts.tolist() == [0, 0, 0, 2345, 0]
    smooth = Smooth(Constant(), 5, batch_size=1000)
    assert smooth.sample_counts(torch.rand(1, 4, 4), 0.5, 2345).tolist() == counts.tolist()


def test_pairs_round_trip_and_bad_arguments_exit_2(capsys):
    line = bench.format_pairs({"speedup_vs_naive": 3.14159, "rows": 2, "rate": 123456.7, "model": "x"})
    assert bench.parse_pairs(line) == {"speedup_vs_naive": "3.142", "rows": "2", "rate": "123457", "model": "x"}
    assert bench.main(["certify", "--quick", "--n", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --n=0 is invalid: expected an integer >= 1"


def test_bench_search_quick_reports_fractions(capsys):
    pytest.importorskip("insta_rs.search.insta_rs")
    assert bench.main(["search", "--quick", "--threads", "1"]) == 0
    pairs = _last_pairs(capsys.readouterr().out)
    draws_fraction, _ = _finite(pairs, "search_draws_fraction", "search_seconds_fraction")
    assert draws_fraction == pytest.approx(float(pairs["search_draws_mean"]) / float(pairs["certify_draws"]), rel=1e-3)


@pytest.mark.slow
def test_bench_certify_ranks_quick_checks_rows_agree(capsys):
    assert bench.main(["certify", "--quick", "--ranks", "2", "--threads", "2"]) == 0
    pairs = _last_pairs(capsys.readouterr().out)
    _finite(pairs, "speedup_ranks", "seconds_1_rank", "seconds_2_ranks")
    assert pairs["rows_identical"] == "1"


# -- speed options ---------------------------------------------------------------------------------------

def test_speed_options_are_off_by_default(compose):
    cfg = compose("certify", ["ckpt_path=unused"])
    assert cfg.certify.autocast is None and cfg.certify.channels_last is False and cfg.certify.compile is False
    smooth = Smooth(torch.nn.Linear(4, 2), 2)
    assert smooth.autocast_dtype is None and not smooth.channels_last and not smooth.compile


def _tsv(tmp_path, name: str, **options) -> list[list[str]]:
    torch.manual_seed(0)
    model = SmallCNN(10, (1, 8, 8), mean=(0.3,), std=(0.4,), width=4, hidden=16).eval()
    torch.manual_seed(1)
    dataset = [(torch.rand(1, 8, 8), k % 10, k) for k in range(6)]
    certifier = Certifier(Smooth(model, 10, batch_size=256, **options), FixedSigma(0.25), 16, 300, 0.001, seed=7)
    path = tmp_path / f"{name}.tsv"
    with CertificationLog(path, {"options": str(options)}, certifier.columns) as log:
        for row in certifier.rows([x for x, _, _ in dataset], [y for _, y, _ in dataset], range(6)):
            log.append(row)
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    time_columns = {lines[0].index("time"), lines[0].index("search_time")}
    return [[v for i, v in enumerate(line) if i not in time_columns] for line in lines]


@pytest.mark.parametrize("options", [{}, {"autocast_dtype": "bf16", "channels_last": True},
                                     {"autocast_dtype": "bf16", "noise": "split", "noise_threads": 2}],
                         ids=["float32", "bf16+channels_last", "bf16+split"])
def test_same_seed_and_options_give_the_same_tsv(tmp_path, options):
    first, second = _tsv(tmp_path, "first", **options), _tsv(tmp_path, "second", **options)
    assert first == second
    assert len(first) == 7 and all(row[first[0].index("guarantee")] == "sound" for row in first[1:])


@pytest.mark.slow
def test_compiled_model_gives_the_same_tsv_as_eager(tmp_path):
    """torch.compile must not change which class a draw gets here (a float32 CNN whose logits are far from
    ties), and two compiled runs agree row for row."""
    eager = _tsv(tmp_path, "eager")
    compiled = _tsv(tmp_path, "compiled", compile=True)
    assert compiled == _tsv(tmp_path, "compiled_again", compile=True)
    assert compiled == eager


def test_each_benchmark_has_its_own_help_with_text_for_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["certify", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m insta_rs.bench certify")
    assert "--ranks" in text and "--autocast" in text and "--ckpt" not in text  # certify's flags, not sequential's
    subcommands = next(a for a in bench.parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(subcommands.choices) == ["certify", "search", "sequential", "throughput"]
    for name, sub in subcommands.choices.items():
        flags = [a for a in sub._actions if a.option_strings and a.dest != "help"]
        assert flags, name
        assert [a.option_strings[0] for a in flags if not (a.help or "").strip()] == [], name


def test_every_flag_help_shows_its_default_and_sigma_search_lists_config_names(capsys):
    subcommands = next(a for a in bench.parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subcommands.choices.items():
        flags = [a for a in sub._actions if a.option_strings and a.dest != "help"]
        assert [a.option_strings[0] for a in flags if "(default: " not in a.help] == [], name
    n = next(a for a in subcommands.choices["certify"]._actions if a.dest == "n")
    assert n.help.endswith("(default: 10000)")
    search = next(a for a in subcommands.choices["sequential"]._actions if a.dest == "sigma_search")
    assert set(search.choices) == {"fixed", "grid", "cascade", "best_level"}
    with pytest.raises(SystemExit):
        bench.main(["sequential", "--help"])
    text = capsys.readouterr().out
    assert "best_level" in text and "BestLevelSigma" not in text and "--radii" in text
    # the class names of older command lines still work
    assert bench.parser().parse_args(["sequential", "--sigma-search", "CascadeSigma"]).sigma_search == "cascade"


def test_bench_sequential_radii_reports_the_difference_at_every_radius(capsys):
    ckpt = ROOT / "tests" / "fixtures" / "identity" / "model.ckpt"
    assert bench.main(["sequential", "--quick", "--ckpt", str(ckpt), "--radii", "0.25,0.5", "--bound", "union",
                       "--rows", "2", "--skip", "30", "--n", "1000", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    pairs = _last_pairs(out)
    assert "radii=[0.25, 0.5]" in out and "sequential/union - fixed, certified accuracy at each radius" in out
    differences = [float(part.split(":")[1]) for part in out.split("at each radius (2 inputs): ")[1].split("\n")[0].split()]
    assert len(differences) == 10 and float(pairs["max_accuracy_difference"]) == pytest.approx(
        max(abs(d) for d in differences), abs=1e-3)
    assert float(pairs["draws_fixed"]) == 16 + 1000 and 16 < float(pairs["draws_sequential"]) <= 16 + 1000


def test_a_flag_of_another_benchmark_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["certify", "--ckpt", "x.ckpt"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --ckpt" in capsys.readouterr().err


CERTIFY = ["certify=fast", "certify.n0=32", "certify.n=600", "certify.skip=60", "certify.max=3",
           "certify.progress=false", "logger=none", "print_config=false",
           f"ckpt_path={ROOT / 'tests' / 'fixtures' / 'identity' / 'model.ckpt'}"]


def _rows(path) -> list[list[str]]:
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    keep = [i for i, column in enumerate(lines[0]) if column not in ("time", "search_time")]
    return [[fields[i] for i in keep] for fields in lines]


@pytest.mark.slow
def test_bf16_and_split_noise_rows_are_reproducible_recorded_and_resume_only_with_the_same_settings(tmp_path):
    """certify.py with certify.autocast=bf16 certify.noise=split: a rerun in a new folder and a resume after a cut
    give the same certify.tsv; the settings file records both; a resume with another autocast or noise is refused
    (exit 2, one line naming the setting)."""
    import json

    speed = ["certify.autocast=bf16", "certify.noise=split", "certify.noise_threads=2"]
    first, second = tmp_path / "first", tmp_path / "second"
    run_script("certify.py", *CERTIFY, *speed, f"hydra.run.dir={first}")
    settings = json.loads((first / "certify.settings.json").read_text())
    assert settings["autocast"] == "bf16" and settings["noise"] == "split"
    # another noise_threads changes no row: not part of the settings, and the rerun gives the same rows
    run_script("certify.py", *CERTIFY, *speed[:2], "certify.noise_threads=1", f"hydra.run.dir={second}")
    assert _rows(second / "certify.tsv") == _rows(first / "certify.tsv")
    lines = (second / "certify.tsv").read_text().splitlines()
    (second / "certify.tsv").write_text("\n".join(lines[:2]) + "\n" + lines[2][:5])  # cut inside row 2
    run_script("certify.py", *CERTIFY, *speed, f"hydra.run.dir={second}")
    assert _rows(second / "certify.tsv") == _rows(first / "certify.tsv")
    result = run_script("certify.py", *CERTIFY, *speed, "certify.autocast=null", f"hydra.run.dir={first}",
                        check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "autocast" in lines[0], result.stderr


def test_autocast_and_noise_are_part_of_what_a_resume_must_share():
    """The settings a resume compares (certify.settings.json): autocast always, noise when not the default stream
    (so runs made before it existed resume), noise_threads never (it changes no row)."""
    from insta_rs.certification import CertifySettings

    default, bf16 = CertifySettings().resume_identity(), CertifySettings(autocast="bf16").resume_identity()
    assert default["autocast"] is None and bf16["autocast"] == "bf16" and "noise" not in default
    assert CertifySettings(noise="split").resume_identity()["noise"] == "split"
    assert CertifySettings(noise_threads=3).resume_identity() == default
    with pytest.raises(ValueError, match="^noise="):
        CertifySettings(noise="fast")
