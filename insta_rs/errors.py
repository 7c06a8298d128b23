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


def check(condition: bool, setting: str, value, accepted: str) -> None:
    """Raise ConfigError("<setting>=<value> is invalid: expected <accepted>") unless condition holds."""
    if not condition:
        raise ConfigError(f"{setting}={value!r} is invalid: expected {accepted}")
