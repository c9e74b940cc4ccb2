"""Errors a user can fix. train.py prints them as one line instead of a traceback."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class UserError(Exception):
    """Bad input: a config value, a data file, a model path. The message names the problem."""


class ConfigError(UserError):
    """A config value that is unknown, mistyped or impossible in combination with another."""


class DataError(UserError):
    """A data file that is missing, empty or has a malformed row (the message names file and line)."""


class ModelError(UserError):
    """A model path or hub id that cannot be loaded."""


class TrainingDiverged(UserError):
    """Too many non-finite losses or gradients in a row; the last good checkpoint is kept."""


class OutputError(UserError):
    """A checkpoint or metrics.jsonl could not be written (disk full, no permission); what was
    written before is intact, so the run resumes from its last checkpoint."""


class SandboxError(UserError):
    """The code sandbox cannot start (bubblewrap missing or unable to create its namespaces)."""
