"""The package's layers hold: no module imports a layer above its own, and no modules import each other in a cycle
(the contracts in pyproject.toml, checked by import-linter on the code as it is, imports inside functions included)."""

import subprocess
import sys
from pathlib import Path

from tests.helpers import PROJECT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_the_import_contracts_are_kept() -> None:
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=PROJECT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout
