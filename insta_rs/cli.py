"""What the entry points (train.py, certify.py, ``python -m insta_rs.*``) share: turning a user error
into one line on stderr and the exit code of INTERFACE.md (2 for configuration, 1 otherwise), and
checking config-group choices before Hydra composes them (Hydra's own message spans many lines).
The one module of the library that imports Hydra and OmegaConf (lazily): it turns config nodes into the
library's settings and objects for the entry points.
"""

from __future__ import annotations

import functools
import io
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

        release_stderr()  # the config composed: from here on, errors are ours

        # W&B's console chatter drowns the results table; its runs still land under <run dir>/wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            return fn(*args, **kwargs)
        except InstaRSError as error:
            remove_empty_run_dir()
            fail(error, error.exit_code)
        except KeyboardInterrupt:
            print(f"interrupted: {resume_hint()}", file=sys.stderr)
            sys.exit(130)
        except Exception as error:
            cause = user_error_cause(error)
            if cause is not None:
                remove_empty_run_dir()
                fail(cause, cause.exit_code)
            if isinstance(error, OmegaConfBaseException):
                remove_empty_run_dir()
                fail(ConfigError(str(error).splitlines()[0]), 2)
            raise
        finally:
            finish_wandb()

    return wrapper


def resume_hint() -> str:
    """How to resume this run: certification resumes by rerunning in the same folder; training also needs
    ``ckpt_path=last``."""
    try:
        from hydra.core.hydra_config import HydraConfig

        config = HydraConfig.get()
        run_dir, job = config.runtime.output_dir, config.job.name
    except (ImportError, ValueError):
        return "rerun the same command to resume"
    if job == "train":
        return f"resume with the same command plus ckpt_path=last hydra.run.dir={run_dir}"
    return f"rerun the same command with hydra.run.dir={run_dir} to resume"


def remove_empty_run_dir() -> None:
    """After a refused run, remove its run directory if it holds nothing but what Hydra wrote when it
    started (``.hydra/`` and the job's log): a failed command leaves no empty run folder behind."""
    import shutil

    try:
        from hydra.core.hydra_config import HydraConfig

        config = HydraConfig.get()
    except (ImportError, ValueError):
        return
    run_dir = Path(config.runtime.output_dir)
    if os.environ.get("LOCAL_RANK", "0") != "0" or not run_dir.is_dir():
        return
    hydra_files = {".hydra", f"{config.job.name}.log"}
    if all(entry.name in hydra_files for entry in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


_HELD: dict = {}


def run_hydra(main) -> None:
    """Call a ``@hydra.main`` function so that Hydra's own errors before the task starts (an override that
    does not parse, such as ``train.sigma 0.5``; an unknown key; a wrong type) are one line and exit 2 like
    ours, instead of Hydra's several lines and exit 1. Hydra writes them to stderr and exits 1; stderr is
    held until the task function starts (``user_errors`` releases it), so only those messages are caught."""
    _HELD["stderr"], _HELD["buffer"] = sys.stderr, io.StringIO()
    sys.stderr = _HELD["buffer"]
    try:
        main()
    except SystemExit as exit_:
        held = _HELD.get("buffer")
        text = held.getvalue() if held is not None and sys.stderr is held else None
        release_stderr(echo=text is None or exit_.code in (0, None))
        if text is not None and exit_.code not in (0, None):
            fail(ConfigError(_hydra_message(text)), 2)
        raise
    finally:
        release_stderr()


def release_stderr(echo: bool = True) -> None:
    """Give stderr back (and write what was held on it, unless ``echo`` is false)."""
    held = _HELD.pop("buffer", None)
    if held is not None and sys.stderr is held:
        sys.stderr = _HELD.pop("stderr")
        if echo and held.getvalue():
            sys.stderr.write(held.getvalue())


def _hydra_message(text: str) -> str:
    """Hydra's multi-line error as one line: its meaningful lines joined, without the HYDRA_FULL_ERROR hint."""
    skip = ("Set the environment variable", "full_key:", "object_type", "reference_type")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(skip)]
    return "; ".join(lines) or "Hydra could not compose the config"


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


# -- what the entry points share beyond errors: settings, the certification trainer, Hydra callbacks -----

def register_configs() -> None:
    """Register the settings dataclasses in Hydra's ConfigStore as the schema of their config group
    (``certify/base``): the YAML files of a group list only what differs, and OmegaConf rejects a wrong type
    or an unknown key. Called by the entry points and by the tests' compose fixture."""
    from hydra.core.config_store import ConfigStore

    from .certification import CertifySettings

    ConfigStore.instance().store(group="certify", name="base", node=CertifySettings)
    register_train_configs()


def register_train_configs() -> None:
    """The schemas of the ``train`` and ``train/loss`` groups (``train/base_<schedule>``,
    ``train/loss/base_<loss>``): each settings dataclass plus a ``_target_`` that builds it, so the YAML files
    of those groups list only what differs and ``instantiate`` builds the settings with their loss; and the
    ``project_root`` resolver of conf/paths."""
    import dataclasses

    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from . import losses, training

    schemas = {"train": {"gaussian": training.TrainSettings, "insta_rs": training.InstaRSSettings},
               "train/loss": {"gaussian": losses.GaussianAugmentation, "consistency": losses.ConsistencyLoss,
                              "macer": losses.MacerLoss}}
    for group, classes in schemas.items():
        for name, cls in classes.items():
            target = dataclasses.field(default=f"{cls.__module__}.{cls.__qualname__}")
            node = dataclasses.make_dataclass(f"{cls.__name__}Config", [("_target_", str, target)], bases=(cls,))
            ConfigStore.instance().store(group=group, name=f"base_{name}", node=node)
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", project_root)


def project_root(relative: str = ".") -> str:
    """``${project_root:}``: the project folder (the one that holds conf/ and insta_rs/), or ``relative``
    resolved against it (``${project_root:../shared}``), whatever the working directory."""
    return os.path.normpath(Path(__file__).resolve().parents[1] / relative)


def settings(cls, node, group: str):
    """The dataclass ``cls`` built from a config node (checked by its ``__post_init__``)."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
    try:
        return cls.from_dict(values) if hasattr(cls, "from_dict") else cls(**values)
    except InstaRSError as error:
        raise with_group(error, values, group) from error


def resolved(node) -> dict | None:
    """A config node as a plain dict (interpolations resolved), or None."""
    from omegaconf import OmegaConf

    return None if node is None else OmegaConf.to_container(node, resolve=True)


def certification_trainer(trainer_cfg, run_dir: Path):
    """``make_trainer(callbacks)`` for ``insta_rs.certification.run``: the Trainer of conf/trainer with our
    ShardSampler instead of Lightning's (which would pad by repeating inputs), no logger, no checkpoints,
    no BatchNorm syncing, and our progress bar instead of Lightning's."""
    from hydra.utils import instantiate

    quiet_lightning()

    def make_trainer(callbacks):
        return instantiate(trainer_cfg, logger=False, callbacks=callbacks, use_distributed_sampler=False,
                           enable_checkpointing=False, enable_model_summary=False, sync_batchnorm=False,
                           enable_progress_bar=False, default_root_dir=str(run_dir))

    return make_trainer


def quiet_lightning() -> None:
    """Keep Lightning's start-up lines (GPU/TPU availability, tips) out of the console."""
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def wandb_settings(cfg):
    """The certification run's W&B settings from ``logger.wandb`` (None when that logger is off)."""
    from .certification import WandbSettings

    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None:
        return None
    return WandbSettings(mode="offline" if wandb_cfg.get("offline", True) else "online",
                         project=wandb_cfg.get("project", "insta-rs"), group=wandb_cfg.get("group"),
                         config=resolved(cfg))


def method_spec(node, trained) -> dict:
    """The ``sigma_search`` config as a dict, with a null ``sigma`` (the fixed-sigma method's) replaced by
    the sigma the checkpoint was trained at; a ConfigError when it was trained across several."""
    spec = resolved(node)
    if "sigma" in spec and spec["sigma"] is None:
        if trained.trained_sigma is None:
            trained_sigma = (trained.config.get("train") or {}).get("sigma")
            raise ConfigError(f"sigma_search.sigma=None is invalid: expected a number: the checkpoint was trained "
                              f"with train.sigma={trained_sigma}, so name the sigma to certify at")
        spec["sigma"] = trained.trained_sigma
    return spec


SWEEP_SUFFIX_ENV = "INSTA_RS_SWEEP_SUFFIX"


def sweep_suffix(mode, sweep_dir) -> str:
    """``"/<a>/<b>"`` from the last two parts of a multirun's sweep directory (``outputs/multirun/2025-01-31/
    12-00-00`` -> ``/2025-01-31/12-00-00``), ``""`` for a single run (``mode`` is Hydra's RunMode or its name)."""
    if not str(mode).upper().endswith("MULTIRUN") or not sweep_dir:
        return ""
    parts = [p for p in Path(str(sweep_dir)).parts if p not in ("/", ".")]
    return "/" + "/".join(parts[-2:])


def _hydra_callback_base():
    from hydra.experimental.callback import Callback

    return Callback


class SweepGroupCallback(_hydra_callback_base()):
    """A Hydra callback (``hydra.callbacks`` in conf/logger/wandb.yaml) that puts the sweep into the W&B group:
    at the start of every job it sets INSTA_RS_SWEEP_SUFFIX to ``sweep_suffix(hydra.mode, hydra.sweep.dir)``,
    which the logger config appends to the experiment name. The jobs of one multirun share the group
    ``<experiment>/<date>/<time>``; a single run is in ``<experiment>``. It runs in the job's own process, so
    it holds with any launcher."""

    def on_job_start(self, config, **kwargs) -> None:
        hydra_cfg = config.get("hydra") if hasattr(config, "get") else None
        suffix = sweep_suffix(hydra_cfg.get("mode"), hydra_cfg.sweep.get("dir")) if hydra_cfg is not None else ""
        os.environ[SWEEP_SUFFIX_ENV] = suffix


def build_group(spec: dict, group: str, **kwargs):
    """Hydra's ``instantiate`` of a config group's object (e.g. ``sigma_search``, ``train``), with the
    library's one-line errors given the group's full key (``with_group``)."""
    from hydra.utils import instantiate

    try:
        return instantiate(spec, **kwargs)
    except Exception as error:
        cause = user_error_cause(error)
        if cause is None:
            raise
        raise with_group(cause, spec, group) from error


def with_group(error: InstaRSError, spec: dict, group: str) -> InstaRSError:
    """The library's errors name the field (``sigma=0 is invalid ...``, the library knows no config paths);
    here they gain the key the user typed: ``sigma_search.sigma=0 ...``, or ``train.loss.lbd=...`` for a
    field of a nested object."""
    message = " ".join(str(error).split())
    field = message.split("=", 1)[0].split(" ", 1)[0]
    if field.startswith(group + ".") or not isinstance(spec, dict):
        return error
    if field in spec:
        return type(error)(f"{group}.{message}")
    for key, value in spec.items():
        if isinstance(value, dict) and field in value:
            return type(error)(f"{group}.{key}.{message}")
    return error
