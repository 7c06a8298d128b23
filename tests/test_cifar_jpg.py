"""The CIFAR-10 JPEG subset path of `make results-cifar-jpg`, end to end at tiny size: two cifar_vgg
experts trained on a few batches of ../shared/data/cifar10-jpg-12k, certified as the study certifies (bf16
forward, sequential sampling in radii mode) with experts (best level, grid) on 3 test inputs at n <= 200, and
compared with the fixed-sigma envelope."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import ROOT, run_script
from insta_rs import analysis

SHARED = ROOT.parent / "shared" / "data" / "cifar10-jpg-12k"
pytestmark = [pytest.mark.skipif(not SHARED.is_dir(), reason="the shared CIFAR-10 JPEG subset is not beside the project"),
              pytest.mark.slow]


def test_cifar_jpg_subset_end_to_end_with_experts_and_envelope(tmp_path):
    experts = {}
    for sigma in (0.25, 0.5):
        run_dir = tmp_path / f"train_{sigma}"
        run_script("train.py", "experiment=cifar_jpg_results", "debug=fast", f"train.sigma={sigma}",
                   f"hydra.run.dir={run_dir}")
        experts[sigma] = run_dir / "checkpoints" / "last.ckpt"
    certify = ["certify=cifar_fast", "certify.sampling=sequential", "certify.radii=[0.25,0.5,0.75,1.0]",
               "certify.first_stage=50", "certify.n0=32", "certify.n=200", "certify.batch_size=100",
               "certify.skip=400", "certify.max=3", "certify.progress=false", "logger=none"]
    mapping = "sigma_search.experts={" + ",".join(f"{s}:{p}" for s, p in experts.items()) + "}"
    for sigma, path in experts.items():
        run_script("certify.py", *certify, f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'certify' / f'fixed_{sigma}'}")
    for method in ("best_level", "grid"):
        run_script("certify.py", *certify, f"ckpt_path={experts[0.25]}", f"sigma_search={method}",
                   "sigma_search.levels=[0.5,0.25]", mapping, f"hydra.run.dir={tmp_path / 'certify' / method}")
    rows = {name: pd.read_csv(tmp_path / "certify" / name / "certify.tsv", sep="\t")
            for name in ("fixed_0.25", "fixed_0.5", "best_level", "grid")}
    assert all(len(frame) == 3 for frame in rows.values())
    assert all((rows[name]["draws"] <= 32 + 200).all() for name in ("fixed_0.25", "fixed_0.5"))  # n0 + at most n
    assert list(rows["best_level"]["radius"]) == [max(a, b) for a, b in zip(rows["fixed_0.25"]["radius"],
                                                                             rows["fixed_0.5"]["radius"])]
    result = run_script("-m insta_rs.compare", str(tmp_path / "certify"), "--dataset", "cifar10", "--envelope",
                        "--out", str(tmp_path / "compare"))
    assert analysis.ENVELOPE_LABEL in result.stdout and analysis.HEADROOM_LABEL in result.stdout
    table = pd.read_csv(tmp_path / "compare" / "compare.csv")
    assert set(table["guarantee"]) == {"sound", "instance", analysis.HEADROOM_GUARANTEE}
    assert (tmp_path / "compare" / "compare.png").is_file()
