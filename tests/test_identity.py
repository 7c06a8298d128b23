"""Before/after identity: the rows a fixed command and seed write must not change when the code
is reorganised. The fixture (tests/fixtures/identity/) holds a digits model trained by ``train=insta_rs``
(2 epochs), a selector trained for it, and the TSVs that main wrote before the redesign for four methods on
four inputs (``certify=fast certify.n0=32 certify.n=500 certify.skip=30 certify.max=4``). Every column but
the wall-clock ones must be byte-identical."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT, run_script

FIXTURE = ROOT / "tests" / "fixtures" / "identity"
CERTIFY = ["certify=fast", "certify.n0=32", "certify.n=500", "certify.skip=30", "certify.max=4",
           "certify.progress=false", "logger=none", f"ckpt_path={FIXTURE / 'model.ckpt'}"]
WALL_CLOCK = {"time", "search_time"}


def without_wall_clock(path: Path) -> list[list[str]]:
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    keep = [i for i, column in enumerate(lines[0]) if column not in WALL_CLOCK]
    return [[fields[i] for i in keep] for fields in lines]


@pytest.mark.parametrize("method", ["fixed", "insta_rs", "grid", "selector"])
def test_rows_match_the_rows_written_before_the_redesign(tmp_path, method):
    extra = [f"sigma_search.ckpt_path={FIXTURE / 'selector.pt'}"] if method == "selector" else []
    run_script("certify.py", *CERTIFY, f"sigma_search={method}", *extra, f"hydra.run.dir={tmp_path}")
    assert without_wall_clock(tmp_path / "certify.tsv") == without_wall_clock(FIXTURE / f"{method}.tsv")
