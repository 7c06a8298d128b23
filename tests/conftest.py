"""Shared fixtures: composing the real configs with Hydra's compose API, and running the real scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture
def compose():
    """compose(config_name, overrides) -> DictConfig, with GlobalHydra cleared afterwards."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from insta_rs.cli import register_configs

    register_configs()

    def _compose(config_name: str, overrides: list[str] = ()):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))

    yield _compose
    GlobalHydra.instance().clear()


def run_script(script: str, *overrides: str, cwd: Path | None = None, timeout: int = 300, check: bool = True,
               env: dict | None = None):
    """Run train.py / certify.py / python -m ... as a user would; returns the CompletedProcess. ``env``: changes
    to the environment (a value None removes the variable, e.g. PYTHONWARNINGS to see the warnings a user sees)."""
    changes = env or {}
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg",
           "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **changes}
    for name in ["INSTA_RS_RUN_DIR", *(k for k, v in changes.items() if v is None)]:
        env.pop(name, None)
    command = [sys.executable, *(["-m", script[3:]] if script.startswith("-m ") else [str(ROOT / script)]), *overrides]
    result = subprocess.run(command, cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
                             f"\n--- stderr\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory) -> Path:
    """One small digits model trained by the real train.py (2 epochs, CSV + offline W&B), shared by tests."""
    run_dir = tmp_path_factory.mktemp("train_digits")
    run_script("train.py", f"hydra.run.dir={run_dir}", "train.epochs=2", "train.sigma=0.25", "train.lr=0.05",
               "trainer.enable_progress_bar=false")
    return run_dir
