"""User-facing errors.

Every error that bad input can cause is a :class:`CompactnnError` whose message is one line: what is wrong and how
to fix it. The CLI prints that line and exits non-zero without a traceback.
"""


class CompactnnError(Exception):
    """Base class of errors caused by bad input. ``str(err)`` is one line meant for the user."""


class ConfigError(CompactnnError, ValueError):
    """A recipe or config is malformed: unknown key or method, wrong type, missing field."""


class TrainingDiverged(ConfigError):
    """The training loss became nan or inf (a ConfigError: the settings, usually the lr, are the cause). Methods
    catch it to add what they know about the cause (k-means: the cluster size; hints: the feature weight)."""


class DataError(CompactnnError):
    """A data set is missing or its files are malformed."""


class PackError(CompactnnError):
    """A ``.cnz`` file is malformed, truncated, tampered with, or uses something not allowed."""


class ModelError(CompactnnError, ValueError):
    """A model cannot be built or transformed as asked (unknown name, unsupported layer, bad layer name)."""


class OutputError(CompactnnError):
    """An output location cannot be written as asked."""
