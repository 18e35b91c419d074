"""`dvc.yaml` names exactly the code each stage runs, so a change to any of it reruns the stage and nothing else.

The code is measured, not listed by hand: the import closure of each `stages/<name>.py` within the project. So are
the params: the keys each stage's code reads on a real run, recorded by `tests/record_param_reads.py`.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import PROJECT, copy_project, make_image_folder, tiny_params


def stages() -> dict[str, dict]:
    return yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


def module_path(name: str) -> Path | None:
    """The project file of the dotted module `name` (relative to the project), or None when it is not ours."""
    base = PROJECT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(PROJECT)
    return None


def package_inits(name: str) -> list[Path]:
    """The `__init__.py` of every package above module `name`: importing `a.b.c` runs `a` and `a.b` first."""
    parts = name.split(".")
    found = [module_path(".".join(parts[:end])) for end in range(1, len(parts))]
    return [path for path in found if path is not None]


def imported_names(path: Path) -> set[str]:
    """Every module `path` may import, anywhere in the file (functions included): `import a.b`, `from a.b import c`
    (both `a.b` and `a.b.c`, which may be a module), and relative imports resolved against the file's package."""
    package = list(path.with_suffix("").parts[:-1]) if path.name != "__init__.py" else list(path.parent.parts)
    names = set()
    for node in ast.walk(ast.parse((PROJECT / path).read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            anchor = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join([*anchor, *([node.module] if node.module else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def has_code(path: Path) -> bool:
    """Whether a file holds more than a docstring (a package `__init__.py` that only documents changes nothing)."""
    body = ast.parse((PROJECT / path).read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def import_closure(script: Path) -> list[str]:
    """The script and every project file it imports, directly or not, as dvc.yaml spells them (script first)."""
    seen = {script}
    pending = [script]
    while pending:
        for name in imported_names(pending.pop()):
            path = module_path(name)
            for found in [*package_inits(name), *([path] if path else [])]:
                if found not in seen:
                    seen.add(found)
                    pending.append(found)
    modules = sorted(path for path in seen - {script} if path.name != "__init__.py" or has_code(path))
    return [script.as_posix(), *(path.as_posix() for path in modules)]


def code_deps(stage: dict) -> list[str]:
    """The stage's deps that are project code (Python files); data deps are the other ones."""
    return [dep for dep in stage["deps"] if dep.endswith(".py")]


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_list_exactly_the_code_it_imports(name: str) -> None:
    stage = stages()[name]
    expected = import_closure(Path("stages") / f"{name}.py")
    listed = code_deps(stage)
    assert listed == expected, (
        f"dvc.yaml: the code deps of stage '{name}' must be its import closure, in this order:\n"
        + "\n".join(f"      - {path}" for path in expected)
    )


def test_the_closure_follows_every_import_form() -> None:
    """`from a.b import c`, `from a import b`, imports inside functions and imports of imports are all followed."""
    closure = import_closure(Path("stages") / "train.py")
    assert "imageclf/training/params.py" in closure  # from imageclf.training.params import TrainParams
    assert "imageclf/data/images.py" in closure  # from imageclf import images, in features.py
    assert "imageclf/core/errors.py" in closure  # reached only through other modules, too
    inference = import_closure(Path("imageclf/inference/predictor.py"))
    assert "imageclf/models/classifier.py" in inference  # inside compiled_model_file
    assert "imageclf/__init__.py" not in closure  # a docstring only


def flat_keys(values: dict, prefix: str = "") -> list[str]:
    """`section.key` of every leaf of params.yaml, in file order (a list, such as augment.transforms, is one leaf)."""
    keys = []
    for name, value in values.items():
        keys += flat_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [prefix + name]
    return keys


@pytest.fixture(scope="module")
def params_read(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """The params keys each stage read, running the stages' own commands in order on a tiny generated project."""
    root = tmp_path_factory.mktemp("param-reads")
    project = copy_project(root / "project", **tiny_params(make_image_folder(root / "raw")))
    recorder = PROJECT / "tests" / "record_param_reads.py"
    reads = {}
    for name, stage in stages().items():
        python, option, module, *args = stage["cmd"].split()
        assert (python, option) == ("python", "-m"), f"stage '{name}': expected 'python -m MODULE ...'"
        out = root / f"{name}.json"
        result = subprocess.run(
            [sys.executable, str(recorder), str(out), module, *args], cwd=project, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
        reads[name] = set(json.loads(out.read_text()))
    return reads


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_params_list_exactly_the_keys_it_reads(name: str, params_read: dict[str, set[str]]) -> None:
    """A key read but not listed leaves the stage stale when it changes; one listed but unread reruns it for nothing."""
    expected = [
        key for key in flat_keys(yaml.safe_load((PROJECT / "params.yaml").read_text())) if key in params_read[name]
    ]
    assert stages()[name]["params"] == expected, (
        f"dvc.yaml: the params of stage '{name}' must be the keys its code reads, in params.yaml order:\n"
        + "\n".join(f"      - {key}" for key in expected)
    )
