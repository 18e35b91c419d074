"""User mistakes as one-line errors (`UserError`) and warnings, instead of tracebacks."""

import sys


def warn(message: str) -> None:
    """Print a one-line warning to stderr; the run goes on."""
    print(f"warning: {message}", file=sys.stderr)


class UserError(Exception):
    """A problem the user can fix (bad params, missing folder, wrong model file); printed as one line."""


def message_of(error: UserError) -> str:
    """The error's one line. A UserError raised in a DataLoader worker process comes back with the worker's
    traceback in its message, ending in the original line, which is all that is kept."""
    lines = str(error).rstrip().splitlines()
    prefix = f"{UserError.__module__}.{UserError.__name__}: "
    return lines[-1].removeprefix(prefix) if len(lines) > 1 and lines[-1].startswith(prefix) else str(error)
