"""What the entry points (train.py, certify.py, ``python -m insta_rs.*``) share: turning a user error
into one line on stderr and the exit code of INTERFACE.md (2 for configuration, 1 otherwise), and
checking config-group choices before Hydra composes them (Hydra's own message spans many lines).
The one module of the library that imports Hydra and OmegaConf (lazily): it turns config nodes into the
library's settings and objects for the entry points.
"""

from __future__ import annotations

import contextlib
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
        from .tracking import console_log

        log = contextlib.ExitStack()  # <run dir>/<job>.log keeps what the console says from here on
        log.enter_context(console_log(job_log_path()))
        # W&B's console chatter drowns the results table; its runs still land under <run dir>/wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        quiet_lightning()
        try:
            if args and hasattr(args[0], "get") and args[0].get("print_config", False) and is_rank_zero():
                print_config(args[0])
            return fn(*args, **kwargs)
        except InstaRSError as error:
            remove_empty_run_dir()
            fail(error, error.exit_code)
        except KeyboardInterrupt:
            print(f"interrupted: {resume_hint()}", file=sys.stderr)
            sys.exit(130)
        except SystemExit as exit_:
            from pytorch_lightning.utilities.exceptions import SIGTERMException

            if isinstance(exit_, SIGTERMException):  # Lightning stopped training (or a loop) after a SIGTERM
                print(f"stopped by SIGTERM: {resume_hint()}", file=sys.stderr)
                sys.exit(1)
            if not isinstance(exit_.code, str):
                raise
            print(exit_.code, file=sys.stderr)  # e.g. "certification stopped by SIGTERM ...": in the log too
            sys.exit(1)
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
            log.close()

    return wrapper


def job_log_path() -> Path | None:
    """``<run dir>/<job name>.log`` (train.log, certify.log) of this Hydra job, on rank 0 (None on the other
    ranks, whose console rank 0 logs, and outside a Hydra job)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        config = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    return Path(config.runtime.output_dir) / f"{config.job.name}.log" if is_rank_zero() else None


PLUMBING_GROUPS = ("callbacks", "logger", "paths", "print_config")  # left out of the printed config


def print_config(cfg) -> None:
    """The composed config as a YAML tree on stdout, at the start of a run (``print_config: true``, the
    default of conf/train.yaml and conf/certify.yaml): resolved where it resolves, without the plumbing
    (callbacks, logger, paths; the whole config is in <run dir>/.hydra/config.yaml)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:  # e.g. a missing ckpt_path: the task's own check says so in one line
        tree = OmegaConf.to_container(cfg, resolve=False)
    shown = {key: value for key, value in tree.items() if key not in PLUMBING_GROUPS}
    print("config (print_config=false hides it; callbacks, logger and paths are in .hydra/config.yaml):")
    print(OmegaConf.to_yaml(OmegaConf.create(shown)).rstrip(), flush=True)


def is_rank_zero() -> bool:
    """Whether this process is the first of its run (not a DDP rank that Lightning, torchrun or SLURM started)."""
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


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


LIST_OR_SCALAR = ("train.sigma",)
"""Settings that take a number or a list (settings typed as lists, such as levels, are lists in every job)."""


def warn_lists_under_multirun(argv: list[str]) -> None:
    """Under ``-m``, ``key=[a,b]`` is one list value in every job, not a sweep over a and b (e.g. one training
    run across both sigmas): say so on stderr, with the sweep spelling, once (not again on DDP child ranks)."""
    if not ({"-m", "--multirun"} & set(argv)) or os.environ.get("LOCAL_RANK") not in (None, "0"):
        return
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") in LIST_OR_SCALAR and value.startswith("[") and value.endswith("]"):
            print(f"warning: {arg} under -m is one job with the list as its value (e.g. one model trained across "
                  f"all of them), not a sweep; to run one job per value write {key.lstrip('+~')}={value[1:-1]}",
                  file=sys.stderr)


def check_group_choices(argv: list[str], conf_dir: str | Path) -> None:
    """Exit 2 with one line when an override ``group=choice`` names a choice that conf/<group>/ lacks (and
    warn about bracketed lists under ``-m``: ``warn_lists_under_multirun``)."""
    warn_lists_under_multirun(argv)
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
    of those groups list only what differs and ``instantiate`` builds the settings with their loss; the schema
    of the ``objective`` group (``objective/base``: ``training.ObjectiveSettings``, what train.py returns); and
    the ``project_root`` resolver of conf/paths."""
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
    ConfigStore.instance().store(group="objective", name="base", node=training.ObjectiveSettings)
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", project_root)


def project_root(relative: str = ".") -> str:
    """``${project_root:}``: the project folder (the one that holds conf/ and insta_rs/), or ``relative``
    resolved against it (``${project_root:../shared}``), whatever the working directory."""
    return os.path.normpath(Path(__file__).resolve().parents[1] / relative)


def settings(cls, node, group: str):
    """The dataclass ``cls`` built from a config node (checked by its ``__post_init__``); its ``warnings()``,
    if it has them (settings that work but are likely a mistake), are printed on stderr with their full keys."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
    try:
        built = cls.from_dict(values) if hasattr(cls, "from_dict") else cls(**values)
    except InstaRSError as error:
        raise with_group(error, values, group) from error
    if os.environ.get("LOCAL_RANK") in (None, "0"):  # once, not again on DDP child ranks
        for note in getattr(built, "warnings", lambda: [])():
            print(f"warning: {qualified(note, values, group)}", file=sys.stderr)
    return built


def resolved(node) -> dict | None:
    """A config node as a plain dict (interpolations resolved), or None."""
    from omegaconf import OmegaConf

    return None if node is None else OmegaConf.to_container(node, resolve=True)


def certification_trainer(trainer_cfg, run_dir: Path):
    """``make_trainer(callbacks)`` for ``insta_rs.certification.run``: the Trainer of conf/trainer with our
    ShardSampler instead of Lightning's (which would pad by repeating inputs), no logger, no checkpoints,
    no BatchNorm syncing, and our progress bar instead of Lightning's."""
    from hydra.utils import instantiate

    quiet_lightning(info=False)

    def make_trainer(callbacks):
        return instantiate(trainer_cfg, logger=False, callbacks=callbacks, use_distributed_sampler=False,
                           enable_checkpointing=False, enable_model_summary=False, sync_batchnorm=False,
                           enable_progress_bar=False, default_root_dir=str(run_dir))

    return make_trainer


# The console noise of the stack that no option turns off, dropped by message in this one place (quiet_lightning):
# Lightning's start-up lines (accelerator availability, its litlogger advertisement) and a deprecation that
# Lightning's own code triggers in torch (nothing a user can act on: its pytree helper, its all_gather).
LIGHTNING_NOISE = ("GPU available: ", "TPU available: ", "HPU available: ", "IPU available: ",
                   "\N{ELECTRIC LIGHT BULB} Tip: For seamless cloud logging")
WARNING_NOISE = ((r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
                 (r"torch\.distributed\.nn\.functional\.all_gather is deprecated", FutureWarning))
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")


class _DropNoise:
    """A logging filter that drops the records whose message starts with one of LIGHTNING_NOISE."""

    def filter(self, record) -> bool:
        return not record.getMessage().startswith(LIGHTNING_NOISE)


def quiet_lightning(info: bool = True) -> None:
    """Keep the stack's noise out of the console: the messages of LIGHTNING_NOISE and WARNING_NOISE, in this
    process (each DDP rank calls it for itself). ``info=False`` also drops Lightning's other information
    lines (model summary, DDP start-up), as certification does."""
    import logging
    import warnings

    for message, category in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not info:
            logger.setLevel(logging.WARNING)
        for target in [logger, *logger.handlers]:  # a handler's filter sees the records of child loggers too
            if not any(isinstance(f, _DropNoise) for f in target.filters):
                target.addFilter(_DropNoise())


def training_loggers(cfg) -> list:
    """The loggers of ``cfg.logger`` for train.py. Ours for W&B (``insta_rs.tracking.WandbLogger``) gets the run's
    readable name (``training_run_name``, unless ``logger.wandb.name`` is set) and whether the run resumes a
    checkpoint (``ckpt_path``), so that it continues the W&B run of its run folder."""
    from hydra.utils import instantiate

    loggers = []
    for node in (cfg.get("logger") or {}).values():
        kwargs = {}
        if str(node.get("_target_", "")) == "insta_rs.tracking.WandbLogger":
            kwargs["resume"] = cfg.get("ckpt_path") is not None
            if node.get("name") is None:
                kwargs["name"] = training_name(cfg)
        loggers.append(instantiate(node, **kwargs))
    return loggers


def training_name(cfg) -> str:
    """``tracking.training_run_name`` of a training config: the data set, model, ``train`` and ``train/loss``
    choices as the user typed them (Hydra's), the training sigma (sigma0 for ``train=insta_rs``), the seed
    and the experiment."""
    from hydra.core.hydra_config import HydraConfig

    from .tracking import training_run_name

    try:
        choices = dict(HydraConfig.get().runtime.choices)
    except ValueError:  # composed without Hydra's app (tests): no choices
        choices = {}
    train = resolved(cfg.get("train")) or {}
    sigma = train.get("sigma") if train.get("sigma") is not None else train.get("sigma0")
    return training_run_name(choices.get("dataset"), choices.get("model"), choices.get("train"), sigma,
                             loss=choices.get("train/loss"), experiment=cfg.get("experiment_name"),
                             seed=cfg.get("seed"))


def wandb_settings(cfg):
    """The certification run's W&B settings from ``logger.wandb`` (None when that logger is off). The group is
    None (the trained run's, recorded in the checkpoint) unless ``logger.wandb.group`` was set to a value."""
    from omegaconf import OmegaConf

    from .certification import WandbSettings

    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None:
        return None
    group = None if OmegaConf.is_interpolation(wandb_cfg, "group") else wandb_cfg.get("group")
    return WandbSettings(mode="offline" if wandb_cfg.get("offline", True) else "online",
                         project=wandb_cfg.get("project", "insta-rs"), group=group, config=resolved(cfg))


def wandb_run_record(cfg) -> dict:
    """The training run's W&B name and group (``tracking.trained_run_record``), which train.py records in the
    run's config, so the checkpoint's certifications are named after it and join its group: the name W&B
    gets (``logger.wandb.name``, else ``training_name``) and ``logger.wandb.group`` (else the experiment's
    name, else ``adhoc``), also when the training itself does not log to W&B."""
    from .tracking import trained_run_record

    wandb_cfg = (cfg.get("logger") or {}).get("wandb") or {}
    group = wandb_cfg.get("group") or cfg.get("experiment_name") or "adhoc"
    return trained_run_record(wandb_cfg.get("name") or training_name(cfg), group)


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


def build_group(spec, group: str, **kwargs):
    """Hydra's ``instantiate`` of a config group's object (e.g. ``sigma_search``, ``train``, ``dataset``), with
    the library's one-line errors given the group's full key (``with_group``)."""
    from hydra.utils import instantiate

    with group_errors(spec, group):
        return instantiate(spec, **kwargs)


@contextlib.contextmanager
def group_errors(spec, group: str, kinds: tuple[type, ...] = (InstaRSError,)):
    """Inside the block, a library error of one of ``kinds`` (also one that Hydra's ``instantiate`` wrapped) is
    raised again with the keys of the group whose config is ``spec`` (``with_group``): around the building of
    a group's object, and around the calls that use it later, when it may raise in turn (a data source that
    meets an unreadable image while training or certification reads it)."""
    try:
        yield
    except Exception as error:
        cause = user_error_cause(error)
        if cause is None or not isinstance(cause, kinds):
            raise
        grouped = with_group(cause, spec, group)
        if grouped is error:
            raise
        raise grouped from error


def data_errors(spec):
    """``group_errors`` for the ``dataset`` group's DataErrors: those a data source raises after it was built,
    as its images are read (``spec``: the source's config)."""
    from .errors import DataError

    return group_errors(spec, "dataset", (DataError,))


def trained_run(ckpt_path, dataset: dict | None):
    """``checkpoints.load_run``: the run of ``ckpt_path`` with the data source the ``dataset`` config builds, or
    with the one the checkpoint recorded when ``dataset`` is None. The errors of building that source and of
    checking it against the model name their ``dataset.*`` key."""
    from hydra.utils import instantiate

    from .checkpoints import load_run, read_checkpoint
    from .errors import DataError

    if dataset is not None:
        with group_errors(dataset, "dataset"):
            source = instantiate(dataset)
        return load_run(ckpt_path, source=source, source_spec=dataset)
    try:
        return load_run(ckpt_path)
    except (ConfigError, DataError) as error:  # building the recorded source: name the key that overrides it
        recorded = (read_checkpoint(ckpt_path)["insta_rs"].get("config") or {}).get("dataset")
        grouped = with_group(error, recorded, "dataset")
        if grouped is error:
            raise
        raise grouped from error


def with_group(error: InstaRSError, spec, group: str) -> InstaRSError:
    """The library's errors name the field (``sigma=0 is invalid ...``, the library knows no config paths);
    here they gain the key the user typed: ``sigma_search.sigma=0 ...``, or ``train.loss.lbd=...`` for a
    field of a nested object. The message's other settings of that object (``<field>=<value>``, such as
    ``dataset.test_dir=test: no folder ... under root=data``) gain the same prefix. ``spec``: the group's
    config (a dict or a DictConfig)."""
    if spec is not None and not isinstance(spec, dict):
        from omegaconf import DictConfig, OmegaConf

        spec = OmegaConf.to_container(spec) if isinstance(spec, DictConfig) else None
    message = " ".join(str(error).split())
    field = message.split("=", 1)[0].split(" ", 1)[0]
    if field.startswith(group + ".") or not isinstance(spec, dict):
        return error
    nested = [(f"{group}.{key}", value) for key, value in spec.items() if isinstance(value, dict)]
    for prefix, values in [(group, spec), *nested]:
        if field in values:
            return type(error)(qualified(message, values, prefix))
    return error


def qualified(message: str, keys, prefix: str) -> str:
    """``message`` with each ``<key>=`` of one of ``keys`` written ``<prefix>.<key>=``, unless it already ends a
    longer name or a path (a letter, digit, ``_``, ``.``, ``/`` or ``-`` before it)."""
    import re

    names = "|".join(re.escape(str(key)) for key in sorted(keys, key=lambda k: len(str(k)), reverse=True))
    if not names:
        return message
    return re.sub(rf"(?<![\w./-])({names})=", lambda match: f"{prefix}.{match.group(1)}=", message)
