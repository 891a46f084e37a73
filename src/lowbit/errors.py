"""One exception type for every user-facing configuration or input problem.

Messages are one line and name the option or file at fault, so a bad run stops
before any training starts with something a person can act on.
"""


class LowbitError(Exception):
    """A problem lowbit reports as one line (``lowbit: error: ...``)."""


class LowbitConfigError(LowbitError, ValueError):
    """Bad configuration value, unknown name, or missing/malformed input."""


class LowbitRunError(LowbitError, RuntimeError):
    """A run that cannot go on (non-finite loss, a checkpoint that cannot be written)."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise LowbitConfigError(message)
