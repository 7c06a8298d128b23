"""A fork server for the tests' script runs (``conftest.run_script``): one Python process imports the heavy
third-party libraries once (torch, Lightning, Hydra, pandas, scipy, matplotlib, W&B: 5-10 s of a 2-core
machine's time per process), then forks a fresh child for each run, which runs train.py / certify.py /
``python -m insta_rs...`` as ``python script.py args`` would: its own process, sys.argv, environment, working
directory, stdin from /dev/null, stdout and stderr to files, its exit code from the interpreter's normal
shutdown (a traceback and 1, SystemExit's code, atexit handlers and non-daemon threads joined). Nothing of
insta_rs is imported here, so each run imports the project's code as it is on disk.

Protocol (one JSON object a line): the client sends {"argv", "cwd", "env", "stdout", "stderr"}; the server
answers {"pid"} once the child runs, then {"code", "cpu"} when it has ended (code negative: killed by that signal;
cpu: the CPU seconds of the child and the processes it waited for, e.g. its DDP ranks).
The child leads its own process group, so a client that times out kills it with its DDP ranks."""

from __future__ import annotations

import json
import os
import sys

PRELOAD = ("torch", "torchvision", "torchmetrics", "pytorch_lightning", "hydra", "omegaconf", "pandas", "numpy",
           "scipy.stats", "scipy.signal", "matplotlib", "matplotlib.pyplot", "PIL.Image",
           "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper")


def preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # a library that is not installed is imported by the child, as without the server
            pass


def serve() -> dict:
    """Answer requests until stdin closes; returns (in the child only) the request the child is to run."""
    requests, answers = sys.stdin, sys.stdout
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            return request
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
        _, status, usage = os.wait4(pid, 0)
        answers.write(json.dumps({"code": os.waitstatus_to_exitcode(status),
                                  "cpu": usage.ru_utime + usage.ru_stime}) + "\n")
        answers.flush()
    sys.exit(0)


def become(request: dict) -> None:
    """Turn the forked child into ``python <argv>`` run in ``cwd`` with ``env``."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False, errors="backslashreplace")
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    # W&B made its media folder (tables, charts) once, at import, in the server; the first child to exit removed
    # it (its finalizer runs at each child's exit): make it again, as a fresh interpreter would have it
    media = getattr(sys.modules.get("wandb.sdk.data_types._private"), "MEDIA_TMP", None)
    if media is not None:
        os.makedirs(media.name, exist_ok=True)


def main() -> None:
    import gc

    preload()
    gc.collect()
    gc.freeze()  # the preloaded objects stay out of the children's collections: their pages stay shared
    request = serve()
    become(request)
    import runpy

    argv = request["argv"]
    if argv[0] == "-m":  # python -m module args: sys.path[0] is the working directory
        sys.argv = [argv[1], *argv[2:]]
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:  # python script.py args: sys.path[0] is the script's folder
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
