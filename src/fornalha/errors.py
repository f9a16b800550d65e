"""User-facing errors.

Anything a user can cause (a missing path, a bad config value, a corrupt file) raises
`FornalhaError` with a message that says what is wrong and how to fix it. The CLI prints
that message on one line and exits with code 2; it never shows a traceback unless
`--debug` is given.
"""


class FornalhaError(Exception):
    """An error caused by input, configuration or the environment, shown to the user as one line."""


class ConfigError(FornalhaError):
    """An unknown configuration key or an invalid value."""


class DataError(FornalhaError):
    """A data source that is missing, unreadable or of an unknown kind."""


class CheckpointError(FornalhaError):
    """A checkpoint that is missing, truncated or corrupt."""
