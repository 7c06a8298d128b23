"""Tests of the analysis layer (insta_rs.analysis, python -m insta_rs.analyze): ALGORITHMS.md sections 5 and 6.

Numbers are checked against answers worked out by hand in the comments, and against a published
file: Cohen et al.'s certification of their CIFAR-10 ResNet-110 (noise 0.25, sigma 0.25) with the
certified accuracies they published for it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from scipy.stats import binomtest

from insta_rs import analysis
from insta_rs import intervals as insta_intervals
from insta_rs.analyze import main
from insta_rs.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]

# Cohen et al.'s layout, written by hand; `time` in both spellings their files use.
COHEN_TSV = (
    "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    "0\t3\t3\t0.5\t1\t0:00:15.250000\n"
    "20\t8\t8\t1.2\t1\t12.5\n"
    "40\t1\t-1\t0.0\t0\t0:00:14.000000\n"
    "60\t2\t5\t0.3\t0\t1:02:03.500000\n"
    "80\t7\t7\t0.25\t1\t0:00:16.25\n"
    "100\t4\t4\t2.4\t1\t17.0\n"
)
# By hand: 6 rows; correct rows have radii 0.5, 1.2, 0.25, 2.4; one abstention (idx 40).
RADII = (0.0, 0.25, 0.5, 1.0, 2.5)
COHEN_ACC = {0.0: 4 / 6, 0.25: 4 / 6, 0.5: 3 / 6, 1.0: 2 / 6, 2.5: 0 / 6}  # radius >= r is inclusive
COHEN_ACR = (0.5 + 1.2 + 0.25 + 2.4) / 6  # = 0.725
COHEN_SECONDS = (15.25 + 12.5 + 14.0 + 3723.5 + 16.25 + 17.0) / 6

# Our layout (ALGORITHMS.md section 6) with two guarantee labels and an extra column.
OURS_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tsigma\tpA_lower\tguarantee\tsearch_time\tsearch_draws\tlevel\n"
OURS_ROWS = (
    "0\t1\t1\t0.8\t1\t1.0\t0.5\t0.9\tsound\t0.0\t0\ta\n"
    "1\t2\t2\t0.4\t1\t1.5\t0.5\t0.8\tsound\t0.0\t0\tb\n"
    "2\t3\t-1\t0.0\t0\t2.0\t0.5\tnan\tsound\t0.0\t0\tc\n"
    "3\t4\t4\t1.0\t1\t1.5\t0.25\t0.99\tinstance\t0.5\t64\td\n"
    "4\t5\t5\t3.0\t1\t1.5\t0.5\t0.99\tinstance\t0.5\t64\te\n"
    "5\t6\t1\t0.7\t0\t1.5\t1.0\t0.9\tinstance\t0.5\t64\tf\n"
    "6\t7\t-1\t0.0\t0\t2.0\t2.0\tnan\tinstance\t1.0\t64\tg\n"
    "7\t8\t8\t0.2\t1\t2.5\t4.0\t0.6\tinstance\t1.5\t64\th\n"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------- parse_time


@pytest.mark.parametrize("value, seconds", [
    ("15.4", 15.4), (12, 12.0), (16.9, 16.9), (" 3 ", 3.0),
    ("0:00:15.123456", 15.123456), ("0:01:00", 60.0), ("1:02:03.500000", 3723.5),
    ("12:00:00", 43200.0), ("2 days, 0:00:01", 172801.0), ("1 day, 1:00:00.5", 90000.5),
])
def test_parse_time(value, seconds):
    assert analysis.parse_time(value) == pytest.approx(seconds, rel=1e-15, abs=0)


@pytest.mark.parametrize("value", ["abc", "", "1:75:00", "0:00:61", "-3", "nan", "inf", "1:2", None, -1.0])
def test_parse_time_rejects_bad_values_naming_them(value):
    with pytest.raises(DataError) as info:
        analysis.parse_time(value)
    assert repr(value) in str(info.value) and "\n" not in str(info.value)


def test_radius_grids():
    assert analysis.CIFAR10_RADII == (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25)
    assert analysis.IMAGENET_RADII == (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5)
    assert analysis.radius_grid("imagenet") == analysis.IMAGENET_RADII
    assert analysis.radius_grid("ImageNet") == analysis.IMAGENET_RADII
    for name in ("cifar10", "digits", "mnist", None):
        assert analysis.radius_grid(name) == analysis.CIFAR10_RADII


# ----------------------------------------------------------------------------------- Cohen et al.'s layout


def test_cohen_file_read_and_summarized_by_hand(tmp_path):
    df = analysis.read_certification(write(tmp_path / "cohen.tsv", COHEN_TSV))
    assert list(df["idx"]) == [0, 20, 40, 60, 80, 100]
    assert list(df["time"]) == [15.25, 12.5, 14.0, 3723.5, 16.25, 17.0]
    assert set(df["guarantee"]) == {"sound"}  # Cohen's fixed-sigma certificates
    assert df["sigma"].isna().all() and (df["search_time"] == 0).all()

    s = analysis.summarize(df, RADII)
    assert s["rows"] == 6 and s["guarantee"] == "sound"
    assert s["certified_accuracy"] == COHEN_ACC
    assert s["clean_accuracy"] == 4 / 6
    assert s["abstain_rate"] == 1 / 6
    assert s["acr"] == pytest.approx(COHEN_ACR, rel=1e-14)
    assert s["seconds_per_input"] == pytest.approx(COHEN_SECONDS, rel=1e-14)
    assert s["sigma_quantiles"] is None
    json.dumps(s)  # plain Python values: summary.json is written from these

    # the intervals: exact Clopper-Pearson for k of 6 (scipy's binomtest(k, 6).proportion_ci(method="exact"),
    # 4/6: [0.2228, 0.9567], 3/6: [0.1181, 0.8819], 2/6: [0.0433, 0.7772], 0/6: [0, 1 - 0.025 ** (1/6) = 0.4593],
    # 1/6: [0.0042, 0.6412]), printed rounded outward; ACR's is the seeded bootstrap of radius * correct
    intervals = s["intervals"]
    assert intervals["confidence"] == 0.95 and set(intervals["certified_accuracy"]) == set(COHEN_ACC)
    assert intervals["certified_accuracy"][0.0] == pytest.approx([0.22277, 0.95673], abs=1e-5)
    assert intervals["certified_accuracy"][2.5] == pytest.approx([0.0, 1 - 0.025 ** (1 / 6)], abs=1e-12)
    assert intervals["abstain_rate"] == pytest.approx([0.00421, 0.64123], abs=1e-5)
    assert intervals["acr"] == pytest.approx(list(insta_intervals.mean_interval(
        [0.5, 1.2, 0.0, 0.0, 0.25, 2.4])), abs=1e-12)
    lo, hi = intervals["acr"]
    assert 0 <= lo < COHEN_ACR < hi <= 2.4
    table = analysis.markdown_table({"cohen": analysis.summarize_by_guarantee(df, RADII)}, RADII)
    acr = f"0.725 [{math.floor(lo * 1000) / 1000:.3f}, {math.ceil(hi * 1000) / 1000:.3f}]"
    assert table.startswith(
        "| run | guarantee | rows | ACR | acc@0 | acc@0.25 | acc@0.5 | acc@1 | acc@2.5 | abstain |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| cohen | sound | 6 | {acr} | 0.667 [0.222, 0.957] | 0.667 [0.222, 0.957] | 0.500 [0.118, 0.882] "
        "| 0.333 [0.043, 0.778] | 0.000 [0.000, 0.460] | 0.167 [0.004, 0.642] |\n"
    )
    assert analysis.INTERVAL_NOTE in table


def test_metric_functions_on_arrays():
    radius = [0.5, 1.2, 0.0, 0.3, 0.25, 2.4]
    correct = [1, 1, 0, 0, 1, 1]
    assert analysis.certified_accuracy(radius, correct, RADII) == COHEN_ACC
    assert analysis.average_certified_radius(radius, correct) == pytest.approx(COHEN_ACR, rel=1e-14)
    # a wrong answer's radius never counts (idx 60 above has radius 0.3 but correct 0)
    assert analysis.certified_accuracy([0.3], [0], [0.0, 0.3]) == {0.0: 0.0, 0.3: 0.0}
    assert math.isnan(analysis.average_certified_radius([], []))


def test_certified_accuracy_curve(tmp_path):
    df = analysis.read_certification(write(tmp_path / "cohen.tsv", COHEN_TSV))
    radii, acc = analysis.certified_accuracy_curve(df, max_radius=3.0, points=7)
    assert radii == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert acc == [4 / 6, 3 / 6, 2 / 6, 1 / 6, 1 / 6, 0.0, 0.0]
    radii, acc = analysis.certified_accuracy_curve(df)  # default: up to 1.05 * the largest certified radius
    assert len(radii) == 200 and radii[0] == 0.0 and radii[-1] == pytest.approx(1.05 * 2.4)
    assert acc[0] == 4 / 6 and acc[-1] == 0.0
    assert all(a >= b for a, b in zip(acc, acc[1:]))


# Cohen et al.'s released certification of their CIFAR-10 ResNet-110 trained and certified at sigma 0.25
# (locuslab/smoothing, data/certify/cifar10/resnet110/noise_0.25/test/sigma_0.25, every 20th test image,
# n = 100000, alpha = 0.001), zlib-compressed and base64-encoded; sha256 of the text below.
PUBLISHED_SHA256 = "6b4e0247f027b2dc3ad0cef43cb6d463e67c15fceb9a3f94a62e02b209b3fed3"
PUBLISHED = (
    "eNptWktuJbsNHdt7iUHxr+W8Tw8aeEGCzguQ5adKcvHQvoJHJnQliiIPD8n6+ef/3v767fcff739+9ePP3/+8ffbr9/+/Pnf"
    "/7z98a9fv35c//79858/3ulNrj/6kMi38TbsQ9+Z3uLtH+MS0hvdIn9XetPr71qmYy+Ld7+XxSWbjyzfk97y+qOPMNuy+T7o"
    "/nHf75Lxs3C43Av9g97HdYpff/TB9CmU93Edw9cffZjmFur7yHsnuoUWj5Cvc+z6u5Qcnz/3d+ZHyyG6hfHO10G3ypfq8bln"
    "vrM/Ktmj0iW8DprX36VSllDo0XPuW/p1I+HHksxaQr2Vv+02jO+7L6E/e/oYtTKfPVXXz+MyiNKzMkxKyM9b+JwlrBsFZQn9"
    "MYgPL+F6onWj63TaQvv2REvG9es623AMWwn9eYxPay5hlseMuo/TY2ItfbweKHU+1nC9z5Z1x3wU8rKbbrstYT2QahkzqFwT"
    "DxRlNxYu4Xqg+5JG+TxQeD2lRK2sgyaXnomDHke6hFxubOUJqaeV/qhEKaV9VhDlrN9PuhW9NyXhcqVZR+koTafCa0rTWcZj"
    "LZPMfGKLDMa/4vV5+abrIK6gIYd03eteeylAj7AO+7IBXBx+P8Yy4e095FIXG2N531JNJqRACAtsUZHro0nzeUUzKMHlgjaa"
    "lG+Fl3VtjjqO9TH6mAap34ZAsGxhnSYPdl1SWXG1pArzSLm8DcPaii1XaCaFssIwmlR00ZwQKz1hQ7gE8GK4Yqk+QSsMfW/E"
    "2PZt/jhuyNiaMR7+howHCrCt4WrMkGp5dMLNzA8hMWx5yTfrbuD4Llwu8l2oX5PXFlZAi+Mkhz8GbhDl/OQDygI9rCkb9WYa"
    "8LwoQPSEbW8A2dd1h2mSnn0bfo2s9BjZpHqwQpbzdytmvmS4SzrptPYGkY0CX6T62IEdTjpXNv6mwixoDEAjExwEvsTEB2hg"
    "Km+cfQd/3NmkwJlpXW2ujO4lHfRcQmFzHuvVcsUJY62edBj1ajID0oq0hiJ8o8hey9ykfDA6c53G3qQF/e6wDtdpQ8sl+UYR"
    "+Qxr7CCFkH6Rg+duoofUx0ARgk+zgK0x1ip9S+dbWh5JbV89ZTXWgv9BTYq0BpRmK//va60sObStBRyPygkMGJHBWLuCe4Wx"
    "jQJDBgNJnOZ1miPfsx/vtqHkawCw58lksdjbt6VRNFETLwwcaRjNUdRXcTHASMNSBoxIYC2YSNfrhpGtwhfpCrZFjwLGzXLI"
    "BkQ8l0MuUs2V1njjyHLTm2OUeB1H693xEJuP0GLGbW35iFqlGgEfSWrSejXzgPT0akLlI4ksKlQgSY0pyagAAE7LQBaFj8io"
    "xGbZNlhZlJefarF+8BGaCGNB1WJIIcLLTVYIMbZg/UrTt9APKVc2H1n+n6PAU6T8hBOli6yXWyEkhrVFtozbWkfCwnGAkm52"
    "XYXSWlsuJXpI26L6+I6rQOoHQBXNQ74S8JHRrGsnSBarm4XAoaxOI0ZsCiqZhvXiy5ArNj1Q2XHlEMIOXsdRhkBcCceaWwNL"
    "KMDJJSoHdFeNU+qWQDZt9Wmc6JYE6rR2WqLwBCpL1u2G4Bq5brf8mnjinfN4XhbpYiCwTGS4hClmkUlGZEx95YcyCymjvRx4"
    "STUZ5l1Tv7IopUpvCrW00xIIiyMbXkLpRLh0nOpDBZY0tqOjCJcnThv+Gi262x/5FTyVkUqB1crrsPVoQ7C2YJIa+VX0QNqF"
    "ecX2JkaFRSqVSR2QqsKvtZFKmTGbxaTs2K0g9WYOeFGl16yrWg0KdWywkYRXEwkmByXxdl3NAxFUo4JOicpYapW5R9vCUGxn"
    "kwK4EIFqrQDG3byezboUfSuAr3pdTnCY+2vJo+iLtJpYgx5WNJDkNcr5ecKQUT2YgWyuuzeycA/sWwP9OKQVBYp08yYYUMBx"
    "Ug8UStMPnQhNuH9UalNgiBvsCAzpO8xCZOlSR8+qSaveUJxmdIpsA4wEWj9GRbgE6caAI2xNWvSuVU02gP5dWrUUGloGShLR"
    "pK0kxWGjnITGKIQ0hiW9SQv9FfFqaKUqt7V+eE3j9W5fHdUEqUaxAVokirRksgy5SZhhh4rtJNxY6tkYCdpaRxUYaVo8OVF2"
    "maJMRBCbHq+GFomjjDcrjOwPb2hEBu5mBf8D1MHMHyziWehtN5B8Twrm1ZUeWRFvzq/IaV5dz6s4mhCjbkPJb54PNWvJxqJF"
    "G9bGqbq3QLSBoRqqG3SVDNVN3yCruDeAmSXwH3TEEhDZDktwrYHTsmCr1VI2q2lH6oX/NvlAcW0ikUZ7zU1I/HMaUFvkwaOc"
    "0BXHxk7lk47odtLX/ouTP2FBn+3yLS6fbKDsgw5ExUfZ0gRdeDRKfLQdDj0gx0RGYEoHkpBaE/NhB66HQwQ5l5OMcEjzlcK5"
    "oN8E/uQCRh4QKlK5QAqH1LY2XwPI0SMxgJbrKde44jDCxbRakq196oo8igh0o9cE78YId1gGnVZtv3fUH2iOuSUqJtzXT7MT"
    "9+PVMKa5cmdphromEJfuVZCiZeBRmJWOS6CqaVWUR/kHtbmIByhC0/eII570Wjt4VonYijPPNkSBNwFGGqvyrILUkHK98ZHR"
    "pPy0WQZqJZ96CkrMbBQzBZ8t0vrE69Zhl42OSRad3i3o0CQP8sPYKShL3yj0j7HSqHxWjSVldOLqNWMoepqYpg3MJlFwxWhT"
    "0D64Q4+wSSvXOOh/cPFIHbgFFx8PbztgrgFWFdLov1bTOISfKuhWoqSoNpDhA0giaBmEoHMHlhFax0nFRSgX0ckmLSTxKdjg"
    "xJEDhEQRWWF0aAgGCIn0tXraF8NeaVa3U/sndrN1RawzbLbnNhsQBdIKuNEezquJoNykaG61mWEATVC9RmCQSIr6NQKfNACW"
    "Y5OS9croQ0UcckAkcsBsU+JKpCghIk/hHZjctEZPgJN4C5dJr9Q5ZkVAG53HBE42OIrpaN5Ah4mxJar4JLBktEBzM5Ld3310"
    "SKrToo/FK+MEZh5J6KS1afegp1tKGCEnPhAhavVR7i7J4luSUGP4wbFztANnG8+/vmYy17xgBNRAn6TZMvlU3ieGN4myKYVe"
    "uXrKobOVcqoAUk5ttJRT5yJBS0Yz+waT1bCK8ulUnAa+lQqfjCatBCftZhjdYGaRhkYafm+HvnXa9++HthQ0QStY009Pdipt"
    "0ivUDHQ8ASOt/E1HR55axkrUNobcn5uV7GKhjgMpYYNlAm205h9otXKT5mnclnlq7CZqm9E/F6ls0w2JCXAgWeT+jGTTj7oE"
    "viIx4H/O6usKSs8EjFzQi1scK5tJp3nzBCdJbt+3VE0ayBUTX5K0NDapHm6A6s9NSnY6L4XnOHjJHBXW2tQdNW+GcebIQxqc"
    "+Iyk9Rwml/O3MdNkcHIMqiY7vlbDVzr7e7M9ZkXbYp5AZArgv30nJKdcM2WdRl9Hp1Oyvhe5ivQS64klTLRbI9u3RpiAASAn"
    "qhvk8gkUGW1bIzR8sRZzm2iWBCXx9mWTLR/ZrVK8u50a8hPz39YdmA4CZE1ap4m1HZBpMLWZjuF2u0VUbAdB391u/faYoQ9I"
    "t6+7wl8nyBMwMkBzZtLhk8a5Jza5v6KqCm3mwuP4/NSxpP6dY9w7ZOtv1GntQxJk/TlP4+Y5i2hR6+XNWUzrRq1Hh3mapP8f"
    "Y2eidQ=="
)
# Their published table (analysis/markdown/vary_noise_cifar10, row sigma = 0.25), two decimals.
PUBLISHED_ACC = {0.25: 0.60, 0.5: 0.43, 0.75: 0.27, 1.0: 0.00, 1.25: 0.00, 1.5: 0.00}


def test_published_cohen_file_reproduces_their_table(tmp_path):
    text = zlib.decompress(base64.b64decode("".join(PUBLISHED)))
    assert hashlib.sha256(text).hexdigest() == PUBLISHED_SHA256
    df = analysis.read_certification(write(tmp_path / "sigma_0.25", text.decode()))
    s = analysis.summarize(df, tuple(PUBLISHED_ACC))
    assert s["rows"] == 500
    assert {r: round(a, 2) for r, a in s["certified_accuracy"].items()} == PUBLISHED_ACC
    # and the exact counts behind them: 300, 214, 133 of 500 rows certified at 0.25, 0.5, 0.75
    assert [s["certified_accuracy"][r] * 500 for r in (0.25, 0.5, 0.75)] == pytest.approx([300, 214, 133])
    # independent recount straight from the text
    rows = [line.split("\t") for line in text.decode().splitlines()[1:]]
    assert s["abstain_rate"] == sum(r[2] == "-1" for r in rows) / 500
    assert s["acr"] == pytest.approx(sum(float(r[3]) * int(r[4]) for r in rows) / 500, rel=1e-12)
    # now with intervals: exact binomial ones for 300, 214, 133 of 500 (scipy's), a bootstrap one around ACR
    for r, k in zip((0.25, 0.5, 0.75), (300, 214, 133)):
        exact = binomtest(k, 500).proportion_ci(confidence_level=0.95, method="exact")
        assert s["intervals"]["certified_accuracy"][r] == pytest.approx([exact.low, exact.high], rel=1e-9)
    lo, hi = s["intervals"]["acr"]
    assert lo < s["acr"] < hi and hi - lo < 0.1
    assert json.loads(json.dumps(s))["intervals"]["certified_accuracy"]["0.25"] == s["intervals"]["certified_accuracy"][0.25]


# --------------------------------------------------------------------------------------------- our layout


def test_two_guarantee_labels_give_separate_summaries(tmp_path):
    df = analysis.read_certification(write(tmp_path / "ours.tsv", OURS_HEADER + OURS_ROWS))
    assert list(df["level"]) == list("abcdefgh")  # extra columns are kept
    by = analysis.summarize_by_guarantee(df, (0.0, 0.5, 1.0))
    assert list(by) == ["instance", "sound"]

    sound = by["sound"]  # rows 0-2: radii 0.8, 0.4 correct, one abstention
    assert sound["rows"] == 3 and sound["guarantee"] == "sound"
    assert sound["certified_accuracy"] == {0.0: 2 / 3, 0.5: 1 / 3, 1.0: 0.0}
    assert sound["acr"] == pytest.approx((0.8 + 0.4) / 3, rel=1e-14)
    assert sound["abstain_rate"] == 1 / 3
    assert sound["seconds_per_input"] == pytest.approx(4.5 / 3, rel=1e-14)
    assert sound["sigma_quantiles"] == {"q05": 0.5, "q25": 0.5, "q50": 0.5, "q75": 0.5, "q95": 0.5}

    inst = by["instance"]  # rows 3-7 (time includes search_time): correct radii 1.0, 3.0, 0.2; wrong 0.7; one abstention
    assert inst["rows"] == 5 and inst["guarantee"] == "instance"
    assert inst["certified_accuracy"] == {0.0: 3 / 5, 0.5: 2 / 5, 1.0: 2 / 5}
    assert inst["acr"] == pytest.approx((1.0 + 3.0 + 0.2) / 5, rel=1e-14)
    assert inst["abstain_rate"] == 1 / 5
    assert inst["seconds_per_input"] == pytest.approx((1.5 + 1.5 + 1.5 + 2.0 + 2.5) / 5, rel=1e-14)
    # sigmas 0.25, 0.5, 1, 2, 4; linear interpolation between order statistics at position q * 4
    assert inst["sigma_quantiles"] == pytest.approx(
        {"q05": 0.25 + 0.2 * 0.25, "q25": 0.5, "q50": 1.0, "q75": 2.0, "q95": 2.0 + 0.8 * 2.0}, rel=1e-14)

    pooled = analysis.summarize(df, (0.0,))
    assert pooled["guarantee"] == "mixed"  # pooling says so
    table = analysis.markdown_table({"run": by}, (0.0, 0.5, 1.0), label_header="method")
    assert table.splitlines()[0] == "| method | guarantee | rows | ACR | acc@0 | acc@0.5 | acc@1 | abstain |"
    assert [re.sub(r" \[[0-9.]+, [0-9.]+\]", "", line) for line in table.splitlines()[2:4]] == [
        "| run | instance | 5 | 0.840 | 0.600 | 0.400 | 0.400 | 0.200 |",
        "| run | sound | 3 | 0.400 | 0.667 | 0.333 | 0.000 | 0.333 |",
    ]


def test_empty_selection_summarizes_to_none(tmp_path):
    df = analysis.read_certification(write(tmp_path / "ours.tsv", OURS_HEADER))
    assert len(df) == 0
    s = analysis.summarize(df, (0.0, 0.5))
    assert s["rows"] == 0 and s["acr"] is None and s["certified_accuracy"] == {0.0: None, 0.5: None}
    assert analysis.markdown_table({"x": s}, (0.0,)).splitlines()[2] == "| x | - | 0 | - | - | - |"


@pytest.mark.parametrize("tail", [
    "8\t9\t9\t0.5",  # cut mid-row, no newline
    "8\t9\t9\t0.5\t1\t1.0\n",  # fewer fields than the header, with a newline
    "8\t9\t9\t0.5\t1\t1.0\t0.5\t0.9\tinst\t0.1\t1x\t",  # all fields, no newline, last values half-written
])
def test_truncated_last_line_is_ignored(tmp_path, tail):
    df = analysis.read_certification(write(tmp_path / "ours.tsv", OURS_HEADER + OURS_ROWS + tail))
    assert list(df["idx"]) == list(range(8))


def test_complete_last_line_without_newline_is_kept(tmp_path):
    df = analysis.read_certification(write(tmp_path / "cohen.tsv", COHEN_TSV.rstrip("\n")))
    assert list(df["idx"]) == [0, 20, 40, 60, 80, 100]


def test_short_row_in_the_middle_is_an_error(tmp_path):
    lines = (OURS_HEADER + OURS_ROWS).splitlines(keepends=True)
    lines[3] = "2\t3\t-1\n"
    with pytest.raises(DataError, match=r"line 4 has 3 fields, the header has 12"):
        analysis.read_certification(write(tmp_path / "ours.tsv", "".join(lines)))


def test_bad_value_names_file_line_and_column(tmp_path):
    path = write(tmp_path / "cohen.tsv", COHEN_TSV.replace("12.5", "soon"))
    with pytest.raises(DataError) as info:
        analysis.read_certification(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "line 3" in message and "'time'" in message


def test_missing_column_is_one_line_naming_file_and_column(tmp_path):
    path = write(tmp_path / "bad.tsv", "idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t2.0\n")
    with pytest.raises(DataError) as info:
        analysis.read_certification(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "missing column 'radius'" in message


def test_unreadable_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read certification file"):
        analysis.read_certification(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match="empty certification file"):
        analysis.read_certification(write(tmp_path / "empty.tsv", ""))


# ------------------------------------------------------------------------------------------------- plots


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_are_written_atomically(tmp_path):
    df = analysis.read_certification(write(tmp_path / "cohen.tsv", COHEN_TSV))
    out = tmp_path / "plots" / "curve.png"
    analysis.plot_certified_accuracy({"cohen (sound)": analysis.certified_accuracy_curve(df)}, out, subject="t")
    assert is_png(out)
    for name, sigmas in [("spread", [0.1, 0.2, 0.5, 1.0, float("nan")]), ("flat", [0.25] * 4), ("none", [float("nan")])]:
        analysis.plot_sigma_histogram(sigmas, tmp_path / f"{name}.png", title=name)
        assert is_png(tmp_path / f"{name}.png")
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []


@pytest.mark.parametrize("sigmas", [[0.25] * 4, [0.05, 0.1, 0.12, 0.3, 0.9, 2.0]])
def test_sigma_histogram_axis_is_linear_from_zero_with_plain_ticks(sigmas):
    """A fixed-sigma run (one sigma) and an instance-wise spread from 0.05 to 2 alike: the axis starts at 0
    (not at -0.2 around one bar), is linear, and its ticks read as plain numbers (no 10^k)."""
    fig = analysis.sigma_histogram_figure(sigmas)
    fig.canvas.draw()
    (ax,) = fig.axes
    assert ax.get_xscale() == "linear"
    low, high = ax.get_xlim()
    assert low == 0 and max(sigmas) < high <= 1.2 * max(sigmas)
    ticks = [t.get_text().replace("\u2212", "-") for t in ax.get_xticklabels() if t.get_text()]
    assert ticks and all(float(t) >= 0 for t in ticks)
    counts = sum(patch.get_height() for patch in ax.patches)
    assert counts == len(sigmas)


# --------------------------------------------------------------------------------------------------- CLI


def make_runs(tmp_path: Path) -> tuple[Path, Path]:
    cohen = write(tmp_path / "released" / "cohen.tsv", COHEN_TSV)
    ours = write(tmp_path / "run_a" / "certify.tsv", OURS_HEADER + OURS_ROWS)
    return cohen, ours


def test_cli_main_prints_table_and_writes_outputs(tmp_path, capsys):
    cohen, ours = make_runs(tmp_path)
    out = tmp_path / "out"
    assert main([str(cohen), str(ours), "--radii", "0,0.5,1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    expected_rows = [  # without the intervals (test_cohen_file_read_and_summarized_by_hand checks them)
        "| cohen | sound | 6 | 0.725 | 0.667 | 0.500 | 0.333 | 0.167 |",
        "| run_a | instance | 5 | 0.840 | 0.600 | 0.400 | 0.400 | 0.200 |",  # labelled by the folder of certify.tsv
        "| run_a | sound | 3 | 0.400 | 0.667 | 0.333 | 0.000 | 0.333 |",
    ]
    table = (out / "table.md").read_text()
    assert [re.sub(r" \[[0-9.]+, [0-9.]+\]", "", line) for line in table.splitlines()[2:5]] == expected_rows
    assert "| 0.333 [0.008, 0.906] |" in table  # abstain 1 of 3: scipy's exact interval, rounded outward
    # sound and instance rows in one table: the notes compare prints, from the one function both use
    assert table.endswith(analysis.table_notes(["instance", "sound"]))
    assert "Guarantees differ between rows (sound, instance)" in table and analysis.INSTANCE_NOTE in table
    assert printed.startswith(table)
    assert is_png(out / "certified_accuracy.png")
    # one guarantee: no note
    assert main([str(cohen), "--radii", "0,0.5,1"]) == 0
    assert "Guarantees differ" not in capsys.readouterr().out


def test_files_are_labelled_by_their_shortest_unique_path_end(tmp_path):
    """As compare labels them: a multirun's numbered job folder keeps its sweep folder, files with one name in
    two folders are told apart by their folders, a file given twice gets #2."""
    from insta_rs.analyze import run_labels

    job = write(tmp_path / "multirun" / "12-00-00" / "0" / "certify.tsv", OURS_HEADER + OURS_ROWS)
    a = write(tmp_path / "noise_0.25" / "sigma_0.25", COHEN_TSV)
    b = write(tmp_path / "noise_0.50" / "sigma_0.25", COHEN_TSV)
    assert run_labels([job, a, b, a]) == ["12-00-00/0", "noise_0.25/sigma_0.25", "noise_0.50/sigma_0.25",
                                          "noise_0.25/sigma_0.25 #2"]
    assert run_labels([a]) == ["sigma_0.25"]


def test_curve_labels_say_what_is_known_of_the_certification():
    assert analysis.curve_label("run", "fixed", "sound", sigma=0.25, n=10000, alpha=0.001) == \
        "run: fixed sigma=0.25 (sound, n=10000, alpha=0.001)"
    assert analysis.curve_label(None, "grid", "sound", levels=[1.0, 0.5, 0.25], n=2000) == \
        "grid levels=1,0.5,0.25 (sound, n=2000)"
    assert analysis.curve_label("cohen", None, "sound") == "cohen (sound)"


def test_cli_dataset_grid(tmp_path, capsys):
    cohen, _ = make_runs(tmp_path)
    assert main([str(cohen), "--dataset", "imagenet"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    # ImageNet's grid up to the largest certified radius (2.4) rounded up to its step: 2.5, not 3.5
    assert header.endswith("| acc@0 | acc@0.5 | acc@1 | acc@1.5 | acc@2 | acc@2.5 | abstain |")
    assert main([str(cohen), "--dataset", "imagenet", "--radii", "0,3,3.5"]) == 0  # --radii: as given
    assert capsys.readouterr().out.splitlines()[0].endswith("| acc@0 | acc@3 | acc@3.5 | abstain |")


def test_cli_errors_are_one_line(tmp_path, capsys):
    cohen, _ = make_runs(tmp_path)
    bad = write(tmp_path / "bad.tsv", "idx\tlabel\tpredict\ttime\n0\t1\t1\t1.0\n")  # neither kind of file
    assert main([str(cohen), str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing column 'radius'" in err and "bad.tsv" in err
    assert main([str(cohen), "--radii", "0,abc"]) == ConfigError.exit_code == 2
    assert "--radii" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["summary.json", "certified_accuracy.png", "empty_folder", "missing.tsv"])
def test_paths_that_are_not_tables_are_command_line_errors(tmp_path, capsys, name):
    """A .json or .png file, a folder with no run in it, a path that does not exist: a mistake in the command
    line, so exit 2 with one line naming the path."""
    path = tmp_path / name
    if name == "empty_folder":
        path.mkdir()
    elif name != "missing.tsv":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" if name.endswith(".png") else b'{"acr": 0.4}')
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err and "Traceback" not in err


def test_analyze_takes_run_folders_as_compare_does(tmp_path, capsys):
    cohen, ours = make_runs(tmp_path)
    write(tmp_path / "sweep" / "0" / "certify.tsv", COHEN_TSV)
    write(tmp_path / "sweep" / "1" / "predict.tsv", "idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0.5\n")
    assert main([str(ours.parent), str(tmp_path / "sweep"), "--radii", "0,0.5"]) == 0
    out = capsys.readouterr().out
    assert "| run_a | instance | 5 |" in out and "| sweep/0 | sound | 6 | 0.725" in out
    assert "| sweep/1 | sound | 1 | 1.000 [0.025, 1.000] |" in out  # a predict.tsv: accuracy 1 of 1


def test_cli_as_a_module(tmp_path):
    cohen, ours = make_runs(tmp_path)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "insta_rs.analyze", str(cohen), str(ours), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "MPLBACKEND": "Agg"})
    assert result.returncode == 0, result.stderr
    assert "| cohen | sound | 6 | 0.725 [" in result.stdout and "| acc@2.25 | abstain |" in result.stdout  # CIFAR-10
    assert (out / "table.md").read_text().splitlines()[2].startswith("| cohen | sound | 6 | 0.725 [")
    assert is_png(out / "certified_accuracy.png")
    failed = subprocess.run([sys.executable, "-m", "insta_rs.analyze", str(tmp_path / "missing.tsv")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and "missing.tsv" in failed.stderr


def test_reads_what_the_certification_log_writes(tmp_path):
    from insta_rs.certification_file import CertificationLog

    path = tmp_path / "run" / "certify.tsv"
    path.parent.mkdir()
    rows = [
        {"idx": 0, "label": 1, "predict": 1, "radius": 0.75, "correct": 1, "time": 0.75, "sigma": 0.5,
         "pA_lower": 0.9, "guarantee": "instance", "search_time": 0.25, "search_draws": 96},
        {"idx": 5, "label": 2, "predict": -1, "radius": 0.0, "correct": 0, "time": 0.5, "sigma": float("nan"),
         "pA_lower": 1e-7, "guarantee": "sound", "search_time": 0.0, "search_draws": 0},
    ]
    with CertificationLog(path, {"seed": 0}) as log:
        for row in rows:
            log.append(row)
    with open(path, "a") as f:
        f.write("10\t3\t3\t0.1")  # a row being written when the run was killed
    df = analysis.read_certification(path)
    assert list(df["idx"]) == [0, 5] and list(df["guarantee"]) == ["instance", "sound"]
    assert df["pA_lower"][1] == 1e-7 and math.isnan(df["sigma"][1]) and list(df["search_draws"]) == [96, 0]
    by = analysis.summarize_by_guarantee(df, (0.0, 0.5))
    assert by["instance"]["certified_accuracy"] == {0.0: 1.0, 0.5: 1.0}
    assert by["sound"]["abstain_rate"] == 1.0 and by["sound"]["sigma_quantiles"] is None
    assert by["instance"]["seconds_per_input"] == 0.75


def test_limited_by_counts_certified_rows_by_kind():
    """What limited each certified row, counted by kind (``upper@2`` counts as ``upper``); abstentions are
    left out; a method without the column has None; the comparison table shows the counts."""
    import pandas as pd

    df = pd.DataFrame({"idx": range(5), "label": [0] * 5, "predict": [0, 0, -1, 0, 1],
                       "radius": [0.3, 0.2, 0.0, 0.1, 0.4], "correct": [1, 1, 0, 1, 0], "time": [0.1] * 5,
                       "limited_by": ["upper@2", "lower@0", "upper@1", "upper@0", "selector"]})
    assert analysis.limited_by_counts(df) == {"upper": 2, "lower": 1, "selector": 1}
    assert analysis.limited_by_counts(df.drop(columns="limited_by")) is None
    assert analysis.limited_by_counts(df.assign(predict=-1)) == {}  # every row abstained
    table = analysis.comparison_table([("a", df), ("b", df.drop(columns="limited_by"))], (0.0,))
    markdown = analysis.comparison_markdown(table, (0.0,))
    assert "| upper 2, lower 1, selector 1 |" in markdown and markdown.splitlines()[3].endswith("| - |")


def test_a_difference_whose_interval_excludes_zero_is_never_shown_touching_zero():
    from insta_rs.analysis import _difference_cell
    cell = _difference_cell(-0.0008, -0.0012, -0.0001)  # three places would show [-0.002, +0.000]
    assert cell == "**-0.0008 [-0.0012, -0.0001]**"
    assert _difference_cell(0.017, 0.0, 0.051) == "tie +0.017 [+0.000, +0.051]"
    assert _difference_cell(0.02, 0.01, 0.03) == "**+0.020 [+0.010, +0.030]**"
