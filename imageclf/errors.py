"""One-line errors for user mistakes, instead of tracebacks."""

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def warn(message: str) -> None:
    """Print a one-line warning to stderr; the run goes on."""
    print(f"warning: {message}", file=sys.stderr)


class UserError(Exception):
    """A problem the user can fix (bad params, missing folder, wrong model file); printed as one line."""


def exits_cleanly(main: Callable[..., T]) -> Callable[..., T]:
    """Run `main`, turning a UserError into `error: <message>` on stderr and exit status 1."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        except BrokenPipeError:  # output piped into a command that stopped reading, such as `head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(141) from None

    return wrapper
