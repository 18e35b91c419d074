"""How a stage or command ends: a UserError as one line and an exit status, and a quick exit."""

import atexit
import functools
import gc
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from imageclf.core.errors import UserError, message_of

T = TypeVar("T")


def exits_cleanly(main: Callable[..., T]) -> Callable[..., T]:
    """Run `main`, turning a UserError into `error: <message>` on stderr and exit status 1."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {message_of(error)}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        except BrokenPipeError:  # output piped into a command that stopped reading, such as `head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(141) from None

    return wrapper


def exit_without_final_collection() -> None:
    """Called once by a program's entry point: when the process ends, freeze every object still alive (`gc.freeze`)
    rather than let the interpreter's last garbage collections walk them, which takes long with torch and timm
    loaded. Nothing changes while the program runs."""
    atexit.register(gc.freeze)
