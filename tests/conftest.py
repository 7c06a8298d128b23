"""Shared fixtures: composing the real configs with Hydra's compose API, and running the real scripts."""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n N`: N workers share the cores, one torch thread each
    import torch

    torch.set_num_threads(1)


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


_PYTEST_ENVIRONMENT = dict(os.environ)  # before any test changes it
SCRIPT_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore",
              "OMP_NUM_THREADS": "1"}


class ScriptServer:
    """The client of tests/script_server.py: a process that has imported torch, Lightning, Hydra & co. once
    and forks a fresh child for each run (each run saves the 5-10 s of CPU those imports take). Started at
    the first run, one per pytest process (so one per xdist worker); it ends when pytest closes its stdin."""

    _instance: "ScriptServer | None" = None
    child_cpu = 0.0  # CPU seconds of the runs so far (a process's own CPU time does not count its server's children)

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("script_server.py"))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
                                        env=self.environment())
        self.pending = b""

    @staticmethod
    def environment() -> dict:
        """The server's environment: pytest's as it started (not as a test's monkeypatch left it), with the
        settings of every script run (SCRIPT_ENV)."""
        env = {**_PYTEST_ENVIRONMENT, **SCRIPT_ENV}
        env.pop("INSTA_RS_RUN_DIR", None)
        return env

    @classmethod
    def get(cls) -> "ScriptServer":
        if cls._instance is None or cls._instance.process.poll() is not None:
            cls._instance = cls()
        return cls._instance

    def _answer(self, timeout: float | None) -> dict | None:
        """The server's next JSON line, or None after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self.pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError("the script server ended (tests/script_server.py)")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, command: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="script_") as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {"argv": command[1:], "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
            pid = self._answer(None)["pid"]
            answer = self._answer(timeout)
            if answer is None:
                os.killpg(pid, signal.SIGKILL)
                ScriptServer.child_cpu += self._answer(None)["cpu"]
                raise subprocess.TimeoutExpired(command, timeout, out.read_text(errors="replace"),
                                                err.read_text(errors="replace"))
            ScriptServer.child_cpu += answer["cpu"]
            return subprocess.CompletedProcess(command, answer["code"], out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))

    @classmethod
    def close(cls) -> None:
        if cls._instance is not None:
            cls._instance.process.stdin.close()
            cls._instance.process.wait(timeout=60)
            cls._instance = None


atexit.register(ScriptServer.close)


# Variables a Python process reads as it starts (warning filters, import paths, thread pools): a run whose
# environment differs from the script server's in one of them gets a new interpreter instead of a fork.
STARTUP_VARIABLES = ("PYTHON", "OMP_", "MKL_", "OPENBLAS_", "LD_", "MALLOC_")


def run_python(command: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)`` for a
    command ``[sys.executable, script.py | -m module, args...]``, by a fork of the script server (``ScriptServer``:
    the same process a ``python`` command starts, without re-importing the libraries) where nothing tells the
    two apart; a new interpreter where the environment differs in a variable read at start-up, or with
    INSTA_RS_TEST_FORK=0."""
    server_env = ScriptServer.environment()
    startup = [k for k in {*env, *server_env} if k.startswith(STARTUP_VARIABLES) and env.get(k) != server_env.get(k)]
    script = command[0] == sys.executable and (command[1] == "-m" or command[1].endswith(".py"))
    if not script or startup or os.environ.get("INSTA_RS_TEST_FORK") == "0":
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return ScriptServer.get().run(command, cwd, env, timeout)


def run_script(script: str, *overrides: str, cwd: Path | None = None, timeout: int = 300, check: bool = True,
               env: dict | None = None):
    """Run train.py / certify.py / python -m ... as a user would; returns the CompletedProcess. ``env``: changes
    to the environment (a value None removes the variable, e.g. PYTHONWARNINGS to see the warnings a user sees)."""
    changes = env or {}
    env = {**os.environ, **SCRIPT_ENV, **changes}
    for name in ["INSTA_RS_RUN_DIR", *(k for k, v in changes.items() if v is None)]:
        env.pop(name, None)
    command = [sys.executable, *(["-m", script[3:]] if script.startswith("-m ") else [str(ROOT / script)]), *overrides]
    result = run_python(command, cwd or ROOT, env, timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
                             f"\n--- stderr\n{result.stderr[-6000:]}")
    return result


def shared_once(tmp_path_factory, name: str, build) -> Path:
    """A folder made once for the whole test run by ``build(folder)``, shared by every pytest-xdist worker: the
    first worker to ask builds it under a lock while the others wait, then all read it (tests must not change
    it). Without xdist it is a plain session-scoped folder."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder the workers' own base folders share
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)  # a build that failed in another worker
                folder.mkdir()
                build(folder)
                done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory) -> Path:
    """One small digits model trained by the real train.py (2 epochs, CSV + offline W&B), shared by tests."""
    def train(run_dir: Path) -> None:
        run_script("train.py", f"hydra.run.dir={run_dir}", "train.epochs=2", "train.sigma=0.25", "train.lr=0.05",
                   "trainer.enable_progress_bar=false")

    return shared_once(tmp_path_factory, "train_digits", train)
