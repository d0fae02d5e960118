"""User-facing errors. The CLI prints their message on one line and exits non-zero (no traceback).

Raise these for mistakes a user can fix (a wrong path, a bad label file, an unknown config key);
let real bugs raise ordinary exceptions so they keep their traceback.
"""


class CVSJepaError(Exception):
    """A problem the user can fix; the message says what and where."""

    exit_code = 2


class ConfigError(CVSJepaError):
    """Unknown key, bad value, unreadable or wrong-version config."""


class DataError(CVSJepaError):
    """Dataset layout, label or frame problem; the message names the file."""


class CheckpointError(CVSJepaError):
    """Missing, corrupt, unsafe or mismatching weights."""
