"""User-facing errors: raised for bad input, printed as one clear line without a traceback."""


class UserError(Exception):
    """Bad input from the user (config, data files, run directory). The message says what to change."""


class ConfigError(UserError):
    """An impossible or inconsistent configuration."""


class DataError(UserError):
    """A missing, corrupt or mismatched data file."""


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed into the configured run."""
