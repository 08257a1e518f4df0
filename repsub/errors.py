"""The errors repsub reports to a user: the CLI prints their message and exits with status 2."""


class RepsubError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class UsageError(RepsubError):
    """An unknown model, layer, method or option value; the message lists the valid choices."""


class DataError(RepsubError):
    """A dataset that cannot be used: missing, empty, one class, or an unreadable image (named)."""


class RunError(RepsubError):
    """A run directory that cannot be read or written as asked (schema version, other model...)."""
