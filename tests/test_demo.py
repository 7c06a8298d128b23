"""`make demo`'s recipe, run as the Makefile writes it with tiny sizes appended: its comparison
holds a fixed-sigma row, a sound instance-wise row and an Insta-RS search row, all on the one demo model,
with their guarantees."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, run_script

TINY = {"train.py": ["debug=fast"], "certify.py": ["certify.n0=16", "certify.n=100", "certify.max=4"]}
SEARCH_TINY = ["sigma_search.m=32", "sigma_search.steps=2"]  # the Insta-RS search's own draws


def demo_commands(out) -> list[tuple[str, list[str]]]:
    """The recipe's commands as (conftest.run_script's script, arguments with TINY appended); ``rm -rf`` of the
    output folder is left out (the folder is new)."""
    # under `make test` the outer make's flags would reach this one (e.g. "Entering directory" lines): drop them
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    text = subprocess.run(["make", "--no-print-directory", "-n", "demo", f"PY={sys.executable}", f"DEMO={out}",
                           "STAMP="], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    commands = [shlex.split(line) for line in text.splitlines() if line.strip()]
    assert commands[0] == ["rm", "-rf", str(out)] and all(c[0] == sys.executable for c in commands[1:]), text
    return [(f"-m {c[2]}", c[3:]) if c[1] == "-m" else
            (c[1], c[2:] + TINY[c[1]] + (SEARCH_TINY if "sigma_search=insta_rs" in c else [])) for c in commands[1:]]


@pytest.mark.slow
def test_the_demo_compares_fixed_sound_instance_wise_and_search_rows(tmp_path):
    out = tmp_path / "demo"
    commands = demo_commands(out)
    assert [script for script, _ in commands].count("certify.py") == 3
    for script, args in commands:
        run_script(script, *args)
    table = pd.read_csv(out / "compare.csv")
    methods = dict(zip(table["run"].str.extract(r"sigma_search=(\w+)")[0], table["guarantee"]))
    assert methods == {"fixed": "sound", "semi_elastic": "sound", "insta_rs": "instance"}
    assert "Guarantees differ between rows" in (out / "compare.md").read_text()
    assert (out / "compare.png").is_file() and (out / "certify" / "insta_rs" / "sigma_hist.png").is_file()
