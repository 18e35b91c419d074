"""Reading `params.yaml`: each stage loads and checks only the sections it uses (`load`), so a section's rules live
beside the code that uses it and a stage depends on no one else's.

A section is a frozen dataclass with `SECTION` (its name in the file) and `check(path)`, which raises `UserError`
naming the first bad value; `load` checks key names and value types before that.
"""

from collections.abc import Collection
from dataclasses import fields
from pathlib import Path
from types import UnionType
from typing import Any, ClassVar, Protocol, TypeVar, get_args, get_origin, get_type_hints

import yaml

from imageclf.core.errors import UserError

PARAMS_FILE = Path("params.yaml")
SECTIONS = ("data", "split", "augment", "train", "evaluate")


class Section(Protocol):
    SECTION: ClassVar[str]

    def check(self, path: Path) -> None: ...


S = TypeVar("S", bound=Section)


def read_params(path: Path = PARAMS_FILE) -> dict:
    """The whole file as a mapping of known sections; one line for a missing file, bad YAML or an unknown section."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run from the project root, where params.yaml is") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise UserError(f"{path}: unknown section '{unknown[0]}' (allowed: {', '.join(SECTIONS)})")
    return raw


def load(schema: type[S], path: Path = PARAMS_FILE) -> S:
    """Section `schema.SECTION` of `path`, built and checked; UserError names the first bad key."""
    raw = read_params(path)
    if schema.SECTION not in raw:
        raise UserError(f"{path}: missing section '{schema.SECTION}'")
    section = build(schema, raw[schema.SECTION], prefix=f"{schema.SECTION}.", path=path)
    section.check(path)
    return section


def flat_params(path: Path = PARAMS_FILE) -> list[tuple[str, object]]:
    """`section.key` and value of every leaf param, in file order (a list is one leaf), unchecked: for reports."""

    def leaves(values: dict, prefix: str) -> list[tuple[str, object]]:
        found = []
        for key, value in values.items():
            found += leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [(prefix + key, value)]
        return found

    return leaves(read_params(path), "")


def build(cls: type, raw: Any, prefix: str, path: Path) -> Any:
    """Build dataclass `cls` from the mapping `raw`, checking key names and value types."""
    where = prefix.rstrip(".")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: {where} must be a mapping of keys, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    names = [field.name for field in fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise UserError(f"{path}: unknown key '{prefix}{unknown[0]}' (allowed in {where}: {', '.join(names)})")
    values = {}
    for name in names:
        key = prefix + name
        if name not in raw:
            raise UserError(f"{path}: missing key '{key}'")
        hint = hints[name]
        if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
            values[name] = build(hint, raw[name], prefix=f"{key}.", path=path)
        else:
            values[name] = checked_type(raw[name], hint, key, path)
    return cls(**values)


def checked_type(value: Any, hint: Any, key: str, path: Path) -> Any:
    origin = get_origin(hint)
    if origin is UnionType:
        options = get_args(hint)
        for option in options:
            try:
                return checked_type(value, option, key, path)
            except UserError:
                continue
        names = " or ".join(option.__name__ for option in options)
        raise UserError(f"{path}: '{key}' must be {names}, got {value!r}")
    if origin is list:
        (item_type,) = get_args(hint)
        if not isinstance(value, list) or not all(isinstance(item, item_type) for item in value):
            raise UserError(f"{path}: '{key}' must be a list of {item_type.__name__}, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise UserError(f"{path}: '{key}' must be {hint.__name__}, got {value!r}")
    return value


def require(condition: bool, path: Path, key: str, value: Any, allowed: str) -> None:
    """Raise the one-line error for `key` unless `condition` holds; `allowed` says what is."""
    if not condition:
        raise UserError(f"{path}: '{key}' is {value!r}; {allowed}")


def one_of(value: str, choices: Collection[str], path: Path, key: str) -> None:
    """`value` must be one of `choices`: a registry's keys, which are its allowed values."""
    require(value in choices, path, key, value, f"allowed: {', '.join(choices)}")
