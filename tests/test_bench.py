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
    assert pairs["model"] == "small_cnn" and pairs["n"] == "256"
    assert "(b)  naive loop" in out and "time of (a) by phase" in out


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


@pytest.mark.parametrize("options", [{}, {"autocast_dtype": "bf16", "channels_last": True}],
                         ids=["float32", "bf16+channels_last"])
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


def test_a_flag_of_another_benchmark_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["certify", "--ckpt", "x.ckpt"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --ckpt" in capsys.readouterr().err
