"""One exception type for every user-facing configuration or input problem.

Messages are one line and name the option or file at fault, so a bad run stops
before any training starts with something a person can act on.
"""


class LowbitConfigError(ValueError):
    """Bad configuration value, unknown name, or missing/malformed input."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise LowbitConfigError(message)
