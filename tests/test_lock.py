"""`dvc.lock` is kept current for the embedded sample: the code, params and sample it records are the ones here."""

import json
import subprocess

from tests.helpers import PROJECT


def leaves(value: object, path: str = "") -> list[tuple[str, str]]:
    """(where, status) pairs of a `dvc status --json` report."""
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in leaves(item, f"{path}/{key}")]
    if isinstance(value, list):
        return [pair for item in value for pair in leaves(item, path)]
    return [(path, str(value))]


def test_dvc_lock_matches_the_code_params_and_sample() -> None:
    """Outputs may be missing (a fresh clone has not run `dvc repro` yet), but no input may differ from the lock."""
    result = subprocess.run(["dvc", "status", "--json"], cwd=PROJECT, capture_output=True, text=True, check=True)
    report = leaves(json.loads(result.stdout or "{}"))
    stale = [(where, status) for where, status in report if status not in ("deleted", "not in cache")]
    assert stale == [], "dvc.lock is out of date: run `dvc repro` and commit dvc.lock"
