"""What the entry points (train.py, certify.py, ``python -m insta_rs.*``) share: turning a user error
into one line on stderr and the exit code of INTERFACE.md (2 for configuration, 1 otherwise), and
checking config-group choices before Hydra composes them (Hydra's own message spans many lines).
This module reads the conf/ folder as files; it does not import Hydra.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from .errors import ConfigError, InstaRSError


def fail(error: BaseException, code: int) -> None:
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def user_errors(fn):
    """Decorator for a task function: InstaRSError -> its one line and exit code; OmegaConf errors
    (a missing mandatory value, a bad interpolation) -> one line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from omegaconf.errors import OmegaConfBaseException

        # W&B's console chatter drowns the results table; its runs still land under <run dir>/wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            return fn(*args, **kwargs)
        except InstaRSError as error:
            fail(error, error.exit_code)
        except KeyboardInterrupt:
            print("interrupted: rerun the same command to resume", file=sys.stderr)
            sys.exit(130)
        except Exception as error:
            cause = user_error_cause(error)
            if cause is not None:
                fail(cause, cause.exit_code)
            if isinstance(error, OmegaConfBaseException):
                fail(ConfigError(str(error).splitlines()[0]), 2)
            raise
        finally:
            finish_wandb()

    return wrapper


def finish_wandb() -> None:
    """Close a W&B run left open (each job of a multirun must finish its own run)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def user_error_cause(error: BaseException) -> InstaRSError | None:
    """The InstaRSError behind ``error``, if any: Hydra's ``instantiate`` wraps what a constructor
    raises in its own InstantiationException, and the user still deserves the one-line message."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, InstaRSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def check_group_choices(argv: list[str], conf_dir: str | Path) -> None:
    """Exit 2 with one line when an override ``group=choice`` names a choice that conf/<group>/ lacks."""
    conf_dir = Path(conf_dir)
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        group_dir = conf_dir / key
        if key == "hydra/launcher":
            check_launcher(value)
            continue
        if key.startswith("hydra/"):
            group_dir = None  # Hydra's own groups (sweepers, loggers) come from Hydra
        if group_dir is None or not group_dir.is_dir() or value in ("null", ""):
            continue
        choices = sorted(p.stem for p in group_dir.glob("*.yaml"))
        for choice in value.split(","):
            if choice not in choices:
                fail(ConfigError(f"{key}={choice!r} is not a known choice: expected one of {', '.join(choices)}"), 2)


SWEEP_DIR_ENV = "INSTA_RS_SWEEP_DIR"


def share_sweep_dir_with_ranks(mode, sweep_dir) -> None:
    """In a multirun (``mode``: Hydra's RunMode or its name), export the sweep's directory for the DDP
    ranks Lightning starts. A child rank reruns the script with the same ``-m`` command line, so it runs
    the same jobs in the same order, in lockstep with rank 0; ``pinned_sweep_dir`` pins its
    ``hydra.sweep.dir`` to this one, so its job folders are rank 0's (``<sweep>/<job number>``) instead
    of a second sweep folder stamped with a later time."""
    if str(mode).upper().endswith("MULTIRUN") and os.environ.get("LOCAL_RANK", "0") == "0":
        os.environ[SWEEP_DIR_ENV] = str(Path(str(sweep_dir)).resolve())


def pinned_sweep_dir(argv: list[str]) -> list[str]:
    """``argv`` plus ``hydra.sweep.dir=<rank 0's>`` for a DDP child rank of a multirun (see above)."""
    sweep_dir = os.environ.get(SWEEP_DIR_ENV)
    if os.environ.get("LOCAL_RANK", "0") != "0" and sweep_dir and ("-m" in argv or "--multirun" in argv):
        return [*argv, f'hydra.sweep.dir="{sweep_dir}"']
    return argv


LAUNCHERS = {
    "basic": (None, None),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}


def check_launcher(name: str) -> None:
    """Exit 2 with one line for ``hydra/launcher=NAME`` when NAME's plugin is not installed (with the ``pip
    install`` that fixes it), or when NAME is unknown and no other launcher plugin is installed. An installed
    plugin, or a name that an installed plugin we do not list may provide, is left to Hydra."""
    if name not in LAUNCHERS:
        listed = {module.rsplit(".", 1)[1] for module, _ in LAUNCHERS.values() if module}
        if any(plugin not in listed for plugin in installed_launcher_plugins()):
            return  # e.g. hydra-ray-launcher: Hydra knows its launcher names
        fail(ConfigError(f"hydra/launcher={name!r} is not a known launcher: expected one of {', '.join(LAUNCHERS)}"), 2)
    module, package = LAUNCHERS[name]
    if module is not None and not module_installed(module):
        fail(ConfigError(f"hydra/launcher={name!r} needs the {package} plugin, which is not installed: "
                         f"pip install {package}"), 2)


def module_installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (False also when a parent package is missing)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # no hydra_plugins at all: find_spec raises for the parent
        return False


def installed_launcher_plugins() -> list[str]:
    """The packages under the ``hydra_plugins`` namespace whose name mentions ``launcher``."""
    import importlib.util
    import pkgutil

    try:
        spec = importlib.util.find_spec("hydra_plugins")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations) if "launcher" in m.name)
