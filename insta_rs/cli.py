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
    """The composed config as a YAML tree on stdout, once the run's settings are checked (``prepared``;
    ``print_config: true``, the default of conf/train.yaml and conf/certify.yaml): resolved where it resolves,
    without the plumbing (callbacks, logger, paths; the whole config is in <run dir>/.hydra/config.yaml)."""
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
    started (``.hydra/`` and the job's log), and then each folder above it that this leaves empty, up to the
    working directory (``outputs/certify/<date>/``): a failed command leaves no empty run folder behind."""
    import shutil

    try:
        from hydra.core.hydra_config import HydraConfig

        config = HydraConfig.get()
    except (ImportError, ValueError):
        return
    run_dir = Path(config.runtime.output_dir).resolve()
    if os.environ.get("LOCAL_RANK", "0") != "0" or not run_dir.is_dir():
        return
    hydra_files = {".hydra", f"{config.job.name}.log"}
    if all(entry.name in hydra_files for entry in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        remove_empty_parents(run_dir)


def remove_empty_parents(path: Path) -> None:
    """Remove the empty folders above ``path`` that lie inside the working directory (those Hydra made for
    the run, such as ``outputs/certify/<date>/``), from the nearest up; stop at the first one that holds
    anything."""
    cwd = Path.cwd().resolve()
    for parent in Path(path).resolve().parents:
        try:
            if cwd not in parent.parents or any(parent.iterdir()):
                return
            parent.rmdir()
        except OSError:  # another process wrote into it meanwhile
            return


_HELD: dict = {}


def run_hydra(main, prepare=None, hints: dict[str, str] | None = None) -> None:
    """Call a ``@hydra.main`` function so that Hydra's own errors before the task starts (an override that
    does not parse, such as ``train.sigma 0.5``; an unknown key; a wrong type) are one line and exit 2 like
    ours, instead of Hydra's several lines and exit 1. Hydra writes them to stderr and exits 1; stderr is
    held until the task function starts (``user_errors`` releases it), so only those messages are caught.

    ``prepare(cfg)``: the entry point's checks, run on every job's config before the first job starts
    (``CheckBeforeRun``, the callback of conf/hydra/default.yaml); ``hints``: a sentence for a top-level key
    that users add by mistake (``+sigma=0.5``), shown when such a key is refused (``check_added_keys``)."""
    _ENTRY.update(prepare=prepare, hints=dict(hints or {}))
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


# -- every job's settings checked before the first job runs ---------------------------------------------------

_ENTRY: dict = {}      # what run_hydra was given: prepare (the entry point's checks) and hints
_PREPARED: dict = {}   # a single run's prepared objects, from the check to the task function (``prepared``)
_SWEEP_CHECK: dict = {}  # while the jobs of a sweep are checked: "shared", what their checks share (sweep_shared)


def warn(text: str) -> None:
    """A warning on stderr (a setting that works but is likely a mistake), once per run: not on DDP child
    ranks, nor while a sweep's jobs are checked (each job warns when it runs)."""
    if "shared" not in _SWEEP_CHECK and os.environ.get("LOCAL_RANK") in (None, "0"):
        print(f"warning: {text}", file=sys.stderr)


def prepared(cfg, prepare):
    """``prepare(cfg)``, the entry point's checks and the objects they build (settings, data, model), for the
    task function; a single run reuses what ``CheckBeforeRun`` built for the same config before Hydra made the
    run folder. Then the config tree is printed (``print_config``): after the checks, never before an error."""
    key = _task_key(cfg)
    if _PREPARED.get("key") == key:
        value = _PREPARED["value"]
        _PREPARED.clear()
    else:
        value = prepare(cfg)
    if cfg.get("print_config", False) and is_rank_zero():
        print_config(cfg)
    return value


def _task_key(cfg) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg, resolve=False)


def task_config(job_cfg):
    """A job's config as its task function sees it: a copy without the ``hydra`` node (as Hydra's run_job does)."""
    import copy

    from omegaconf import open_dict, read_write

    task = copy.deepcopy(job_cfg)
    with read_write(task), open_dict(task):
        task.pop("hydra", None)
    return task


def _hydra_callback_base():
    from hydra.experimental.callback import Callback

    return Callback


class CheckBeforeRun(_hydra_callback_base()):
    """A Hydra callback (``hydra.callbacks.check_before_run``, conf/hydra/default.yaml) that checks what the
    entry point's ``prepare`` checks, for the run or for every job of a sweep, before Hydra makes any folder:
    a refused setting is one line on stderr, exit 2 (1 for a file that cannot be read), no run folder, and no
    job runs when any job of the sweep would be refused (``sweep_jobs``). DDP child ranks skip it: rank 0
    checked the same command."""

    def on_run_start(self, config, **kwargs) -> None:
        if _ENTRY.get("prepare") is not None and is_rank_zero():
            check_jobs(config, [None])

    def on_multirun_start(self, config, **kwargs) -> None:
        if _ENTRY.get("prepare") is not None and is_rank_zero():
            check_jobs(config, sweep_jobs(config))


def sweep_jobs(config) -> list[list[str]]:
    """The overrides of every job of a multirun, as the basic sweeper makes them: the product of the discrete
    sweeps (``a=1,2``, ``range(...)``, ``choice(...)``) of the command line and of ``hydra.sweeper.params``. A
    sweeper that draws its own values (Optuna's ``interval(...)``) gets the config's value for those keys: every
    discrete value is still checked, the drawn ones are checked by the settings when each trial builds them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    overrides = [o for o in parser.parse_overrides(arguments) if not o.is_sweep_override() or o.is_discrete_sweep()]
    return BasicSweeper.split_arguments(overrides, None)[0]


def check_jobs(config, jobs: list) -> None:
    """Compose each job's config (``None``: the run's own ``config``) and check it (``check_job``); exit with
    one line naming the job of a sweep and its swept values at the first refusal, before any job runs."""
    from hydra.core.global_hydra import GlobalHydra

    swept = _swept_keys(jobs)
    if jobs != [None]:
        _SWEEP_CHECK["shared"] = {}
    try:
        for number, overrides in enumerate(jobs):
            where = ""
            if overrides is not None:
                shown = " ".join(o for o in overrides if o.split("=", 1)[0] in swept) or " ".join(overrides)
                where = f"sweep job {number} of {len(jobs)} ({shown}): "
            try:
                job = config if overrides is None else \
                    GlobalHydra.instance().config_loader().load_sweep_config(config, list(overrides))
                value = check_job(job)
            except Exception as error:
                cause = config_error(error)
                if cause is None:
                    raise
                release_stderr()
                tail = "; no job was run" if overrides is not None else ""
                fail(type(cause)(where + " ".join(str(cause).split()) + tail), cause.exit_code)
            if overrides is None:
                _PREPARED.update(key=_task_key(task_config(job)), value=value)
    finally:
        _SWEEP_CHECK.clear()


def sweep_shared(key, build):
    """``build()``, made once for all the jobs of a sweep while their settings are checked (a data set, a
    checkpoint with its data, the same in several jobs): the checks keep nothing, so they may share it."""
    shared = _SWEEP_CHECK.get("shared")
    if shared is None:
        return build()
    if key not in shared:
        shared[key] = build()
    return shared[key]


def _swept_keys(jobs: list) -> set[str]:
    """The keys whose value differs between the jobs of a sweep."""
    values: dict[str, set[str]] = {}
    for overrides in jobs:
        for override in overrides or ():
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    return {key for key, seen in values.items() if len(seen) > 1}


def config_error(error: BaseException) -> InstaRSError | None:
    """The one-line user error behind ``error``: the library's own (``user_error_cause``), a config value
    OmegaConf refuses or a mandatory one left unset (``ckpt_path=???``), or a composition Hydra refuses."""
    from hydra.errors import HydraException
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    cause = user_error_cause(error)
    if cause is not None:
        return cause
    if isinstance(error, MissingMandatoryValue):
        key = getattr(error, "full_key", "") or str(error).splitlines()[0].rsplit(":", 1)[-1].strip()
        return ConfigError(missing_value_message(key))
    if isinstance(error, (OmegaConfBaseException, HydraException)):
        return ConfigError(_hydra_message(str(error)))
    return None


MISSING_HINTS = {
    "ckpt_path": "give the checkpoint written by train.py, e.g. ckpt_path=outputs/train/<date>/<time>/checkpoints/"
                 "last.ckpt",
    "sigma_search.ckpt_path": "give the selector.pt written by train.py train=selector, e.g. "
                              "sigma_search.ckpt_path=outputs/train/<date>/<time>/selector.pt",
}


def missing_value_message(key: str) -> str:
    return f"{key} is not set and has no default: {MISSING_HINTS.get(key, f'give {key}=VALUE')}"


def check_job(job) -> object:
    """Check one job's config (with its ``hydra`` node) before it runs: every mandatory value set, every key
    added with ``+``/``++`` one that something takes (``check_added_keys``), then the entry point's ``prepare``
    on the task's config; returns what ``prepare`` built."""
    from omegaconf import OmegaConf

    task = task_config(job)
    missing = sorted(OmegaConf.missing_keys(task))
    if missing:
        raise ConfigError(missing_value_message(missing[0]))
    check_added_keys(job, task)
    return _ENTRY["prepare"](task)


def check_added_keys(job, task) -> None:
    """ConfigError for a key added with ``+key=value`` or ``++key=value`` that no config group defines and
    nothing reads: at the top level (``+sigma=0.5``: Hydra's own hint for ``sigma=0.5`` leads there, and the
    value would be ignored), or in the arguments of an object built from ``_target_`` (``+model.foo=1``). A key
    added to a settings group without a ``_target_`` (``+certify.foo=1``) is refused when its dataclass is built
    (``settings``); keys under ``hydra`` and config-group choices (``+experiment=demo``) are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig, OmegaConf

    choices = set((OmegaConf.select(job, "hydra.runtime.choices") or {}).keys())
    overrides = OverridesParser.create().parse_overrides(list(job.hydra.overrides.task))
    for override in overrides:
        key = override.key_or_group
        if not (override.is_add() or override.is_force_add()) or key.startswith("hydra") or key in choices:
            continue
        value = override.get_value_element_as_str()
        parts = key.split(".")
        if len(parts) == 1 or parts[0] not in choices:  # a top-level key, or a key under one (+model.x in certify)
            defined = (len(parts) > 1 or override.is_force_add()) and _defined_without(job, override, parts[0])
            if not defined:
                raise ConfigError(_top_level_refusal(task, parts[0], value, override.input_line, len(parts) == 1))
        if len(parts) == 1:
            continue
        if parts[-1].startswith("_"):  # _target_, _partial_, ...: Hydra's own keys of an object
            continue
        for depth in range(len(parts) - 1, 0, -1):
            node = OmegaConf.select(task, ".".join(parts[:depth]))
            if isinstance(node, DictConfig) and "_target_" in node:
                accepted = accepted_keys(str(node["_target_"]))
                name = parts[depth]
                if accepted is not None and name not in accepted:
                    owner = f"an argument of {node['_target_']}"
                    raise ConfigError(unknown_key_message(f"{'.'.join(parts[:depth])}.{name}", value, accepted, owner))
                break


def _defined_without(job, override, key: str) -> bool:
    """Whether the config without ``override`` (``++key=...``, ``+key.sub=...``) has the top-level ``key``."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    others = [line for line in job.hydra.overrides.task if line != override.input_line]
    base = GlobalHydra.instance().config_loader().load_configuration(
        config_name=job.hydra.job.config_name, overrides=list(job.hydra.overrides.hydra) + others,
        run_mode=RunMode.RUN)
    return key in base


def _top_level_refusal(task, key: str, value: str, typed: str, suggest: bool = True) -> str:
    """``+sigma=0.5: sigma is not a setting of certify.py ...; did you mean sigma_search.sigma=0.5? (hint)``: the
    keys of the config that end in ``key`` or a name close to it (when ``suggest``), and the entry point's hint."""
    import difflib

    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith(".py") else "this command"
    leaves = [path for path in _leaf_keys(task) if path != key and not path.startswith(key + ".")]
    same = [path for path in leaves if path.rsplit(".", 1)[-1] == key]
    close = same or [path for path in leaves if path.rsplit(".", 1)[-1] in difflib.get_close_matches(
        key, sorted({p.rsplit(".", 1)[-1] for p in leaves}), n=2)]
    message = f"{typed}: {key} is not a setting of {script} (no config group defines it, so it would be ignored)"
    if close and suggest:
        message += f"; did you mean {' or '.join(f'{path}={value}' for path in close[:3])}?"
    hint = _ENTRY.get("hints", {}).get(key)
    return f"{message} ({hint})" if hint else message


def _leaf_keys(node, prefix: str = "") -> list[str]:
    """The dotted keys of a config's values (not of its nodes), without the plumbing groups."""
    from omegaconf import DictConfig

    keys = []
    for name in node.keys() if isinstance(node, DictConfig) else ():
        name = str(name)
        if not prefix and name in PLUMBING_GROUPS:
            continue
        child = node._get_node(name)
        if isinstance(child, DictConfig):
            keys += _leaf_keys(child, f"{prefix}{name}.")
        elif not name.startswith("_"):
            keys.append(prefix + name)
    return keys


def accepted_keys(target: str) -> set[str] | None:
    """The keyword arguments the class or function ``target`` takes (its dataclass fields, its signature's
    names), or None when it takes any (``**kwargs``) or cannot be inspected."""
    import inspect

    from hydra.utils import get_object

    try:
        signature = inspect.signature(get_object(target))
    except Exception:  # an unknown _target_ is Hydra's to report when it builds the object
        return None
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                      inspect.Parameter.KEYWORD_ONLY)}


def unknown_key_message(key: str, value, accepted, owner: str) -> str:
    """``certify.nn=1 is not a setting of certify: did you mean certify.n? (accepted: alpha, ...)``: the key, its
    value, the nearest accepted key when one is close, and every accepted key."""
    import difflib

    prefix, _, name = key.rpartition(".")
    names = sorted(str(k) for k in accepted if not str(k).startswith("_"))
    nearest = difflib.get_close_matches(name, names, n=1)
    guess = f"; did you mean {prefix + '.' if prefix else ''}{nearest[0]}?" if nearest else ""
    accepted_text = f"accepted: {', '.join(names)}" if names else "it takes none"
    return f"{key}={value} is not {owner}{guess} ({accepted_text})"


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

    import dataclasses

    values = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in values if key not in fields)
    if unknown:  # e.g. +certify.foo=1: one line naming the key and the accepted ones, not the constructor's TypeError
        raise ConfigError(unknown_key_message(f"{group}.{unknown[0]}", values[unknown[0]], fields,
                                              f"a setting of {group}"))
    try:
        built = cls.from_dict(values) if hasattr(cls, "from_dict") else cls(**values)
    except InstaRSError as error:
        raise with_group(error, values, group) from error
    for note in getattr(built, "warnings", lambda: [])():
        warn(qualified(note, values, group))
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


def warn_untrained_levels(spec: dict, trained) -> None:
    """A warning when a finite-set method's ``sigma_search.levels`` (cascade, grid, best_level; defaults
    [1.0, 0.5, 0.25], best_level also 0.12) include sigmas the model was never trained at, without experts:
    those levels certify poorly, and a model trained at one sigma is best certified at it (sigma_search=fixed).
    Trained: ``train.sigma`` (one or a list), or [train.sigma_min, train.sigma_max] for train=insta_rs."""
    import math

    levels = spec.get("levels")
    if not levels or spec.get("experts"):
        return
    train = trained.config.get("train") or {}
    if train.get("sigma_min") is not None and train.get("sigma_max") is not None:
        low, high = float(train["sigma_min"]), float(train["sigma_max"])
        untrained = [s for s in levels if not low * (1 - 1e-9) <= float(s) <= high * (1 + 1e-9)]
        what, fix = (f"train=insta_rs with sigmas in [train.sigma_min={low:g}, train.sigma_max={high:g}]",
                     f"give levels in that range, e.g. sigma_search.levels=[{high:g},{low:g}]")
    else:
        sigmas = train.get("sigma")
        sigmas = [float(s) for s in sigmas] if isinstance(sigmas, (list, tuple)) else \
            [float(sigmas)] if isinstance(sigmas, (int, float)) else []
        if not sigmas:
            return
        untrained = [s for s in levels if not any(math.isclose(float(s), t, rel_tol=1e-6) for t in sigmas)]
        listed = ",".join(f"{t:g}" for t in sigmas)
        what = f"train.sigma={listed if len(sigmas) == 1 else f'[{listed}]'}"
        fix = ("certify it at that sigma with sigma_search=fixed" if len(sigmas) == 1
               else f"give sigma_search.levels=[{listed}]")
        fix += ", or give one model per level with sigma_search.experts"
    if untrained:
        shown = ", ".join(str(float(s)) for s in untrained)
        warn(f"sigma_search.levels={[float(s) for s in levels]} but the model in ckpt_path was trained with {what}: "
             f"level(s) {shown} were never trained and certify poorly; {fix}")


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
    the library's one-line errors given the group's full key (``with_group``); a key its ``_target_`` does not
    take is a one-line ConfigError naming it (instead of the constructor's TypeError)."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    values = OmegaConf.to_container(spec, resolve=False) if isinstance(spec, DictConfig) else spec
    if isinstance(values, dict) and "_target_" in values:
        accepted = accepted_keys(str(values["_target_"]))
        unknown = [] if accepted is None else sorted(str(k) for k in values if not str(k).startswith("_")
                                                     and k not in accepted)
        if unknown:
            raise ConfigError(unknown_key_message(f"{group}.{unknown[0]}", values[unknown[0]], accepted,
                                                  f"an argument of {values['_target_']}"))
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
    import json

    return sweep_shared(("trained_run", str(ckpt_path), json.dumps(dataset, sort_keys=True, default=str)),
                        lambda: _trained_run(ckpt_path, dataset))


def _trained_run(ckpt_path, dataset: dict | None):
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
