"""`make demo`'s recipe, run as the Makefile writes it with tiny sizes appended: its comparison
holds a fixed-sigma row, a sound instance-wise row and an Insta-RS search row, all on the one demo model,
with their guarantees."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pandas as pd

from conftest import ROOT

TINY = {"train.py": ["debug=fast"], "certify.py": ["certify.n0=16", "certify.n=100", "certify.max=4"]}


def demo_commands(out) -> list[list[str]]:
    # under `make test` the outer make's flags would reach this one (e.g. "Entering directory" lines): drop them
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    text = subprocess.run(["make", "--no-print-directory", "-n", "demo", f"PY={sys.executable}", f"DEMO={out}",
                           "STAMP="], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    commands = [shlex.split(line) for line in text.splitlines() if line.strip()]
    assert all(command[0] in (sys.executable, "rm") for command in commands), text
    return [command + TINY.get(os.path.basename(command[1]) if len(command) > 1 else "", [])
            for command in commands]


def test_the_demo_compares_fixed_sound_instance_wise_and_search_rows(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "WANDB_MODE": "offline", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    commands = demo_commands(out)
    assert sum(command[1:2] == ["certify.py"] for command in commands) == 3
    for command in commands:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr[-3000:]}"
    table = pd.read_csv(out / "compare.csv")
    methods = dict(zip(table["run"].str.extract(r"sigma_search=(\w+)")[0], table["guarantee"]))
    assert methods == {"fixed": "sound", "semi_elastic": "sound", "insta_rs": "instance"}
    assert "Guarantees differ between rows" in (out / "compare.md").read_text()
    assert (out / "compare.png").is_file() and (out / "certify" / "insta_rs" / "sigma_hist.png").is_file()
