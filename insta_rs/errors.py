"""Errors a user can fix, each with a one-line message that names the setting, the value and what
is accepted. Entry points (train.py, certify.py, the ``python -m`` tools) print the message on
stderr and exit with ``exit_code``: 2 for configuration errors, 1 for everything else."""


class InstaRSError(Exception):
    """Base class: an error whose message is shown to the user as one line."""

    exit_code = 1


class ConfigError(InstaRSError, ValueError):
    """A configuration value or combination that cannot work (exit code 2)."""

    exit_code = 2


class DataError(InstaRSError):
    """A data set that is missing, has the wrong layout, or does not match the model (exit code 1)."""


class CheckpointError(InstaRSError):
    """A checkpoint that is missing, truncated, or belongs to another configuration (exit code 1)."""


class DataSettingError(ConfigError, DataError):
    """A DataError that a setting fixes, so a configuration error (exit code 2): the data a setting names is
    not there (no such folder, no files of the expected layout), or does not fit the model (another class or
    channel count). Files that are there but cannot be read stay DataErrors (exit code 1)."""


class CheckpointSettingError(ConfigError, CheckpointError):
    """A CheckpointError that a setting fixes (exit code 2): the path a setting names is no file. A file that
    is there but truncated or foreign stays a CheckpointError (exit code 1)."""


def check(condition: bool, setting: str, value, accepted: str) -> None:
    """Raise ConfigError("<setting>=<value> is invalid: expected <accepted>") unless condition holds."""
    if not condition:
        raise ConfigError(f"{setting}={value!r} is invalid: expected {accepted}")


def settings_from_config(cls, values: dict, prefix: str, owner: str):
    """A settings dataclass ``cls`` built from a config group's values and validated (``cls.validate()``);
    an unknown key is a ConfigError naming it (``<prefix>.<key> is not <owner>``) and the accepted keys."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]} is not {owner}: expected one of {', '.join(sorted(known))}")
    settings = cls(**values)
    settings.validate()
    return settings
