"""Run a stage module as `python -m MODULE ARGS...` does and write the params keys its code read to OUT_JSON.

Usage, from a project root: python PATH/TO/record_param_reads.py OUT_JSON MODULE ARGS...

A read is an attribute access on a section that `imageclf.core.config.load` returned, after it returned (the checks
`load` makes while loading are not reads of the stage), and every key of the file when the stage lists them all
(`imageclf.core.config.flat_params`, for its report).
"""

import dataclasses
import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any


class ParamReads:
    """Records `section.key` for every leaf param read from the instances it has been shown."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.prefixes: dict[int, tuple[Any, str]] = {}  # id → (instance, "section."); the instance keeps the id taken

    def watch(self, instance: Any, prefix: str = "") -> None:
        """Record reads of `instance`'s fields (and its nested sections') from now on."""
        self.prefixes[id(instance)] = (instance, prefix)
        type(instance).__getattribute__ = self.recording_getattribute()
        for field in dataclasses.fields(instance):
            value = object.__getattribute__(instance, field.name)
            if dataclasses.is_dataclass(value):
                self.watch(value, f"{prefix}{field.name}.")

    def recording_getattribute(self) -> Any:
        reads = self

        def getattribute(instance: Any, name: str) -> Any:
            value = object.__getattribute__(instance, name)
            watched, prefix = reads.prefixes.get(id(instance), (None, ""))
            if (
                watched is instance
                and name in type(instance).__dataclass_fields__
                and not dataclasses.is_dataclass(value)
            ):
                reads.keys.add(prefix + name)
            return value

        return getattribute


def main(out_path: str, module: str, *args: str) -> None:
    sys.path.insert(0, os.getcwd())  # the project's own package, as `python -m` finds it
    import imageclf.core.config as config

    reads = ParamReads()
    load, flat_params = config.load, config.flat_params

    def watched_load(schema: Any, *load_args: Any, **load_kwargs: Any) -> Any:
        loaded = load(schema, *load_args, **load_kwargs)
        reads.watch(loaded, f"{schema.SECTION}.")
        return loaded

    def watched_flat_params(*load_args: Any, **load_kwargs: Any) -> Any:
        listed = flat_params(*load_args, **load_kwargs)
        reads.keys.update(key for key, _ in listed)
        return listed

    config.load, config.flat_params = watched_load, watched_flat_params
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        Path(out_path).write_text(json.dumps(sorted(reads.keys)))


if __name__ == "__main__":
    main(*sys.argv[1:])
