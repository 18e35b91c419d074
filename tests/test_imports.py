"""What the first two stages load: split and augment (with no copies to make) import none of torch, timm,
torchvision, albumentations, OpenCV or scikit-learn, libraries they never use."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import PROJECT

HEAVY = ("torch", "timm", "torchvision", "albumentations", "cv2", "sklearn")


def test_split_and_augment_run_without_importing_torch(tmp_path: Path) -> None:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["data"]["raw_dir"] = str(PROJECT / "data/sample")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    script = (
        "import runpy, sys; "
        "sys.argv = ['split', 'data/split', 'data/split/rejected.csv', 'metrics/split.json', 'details.json']; "
        "runpy.run_module('stages.split', run_name='__main__'); "
        "sys.argv = ['augment', 'data/split/train', 'data/augmented']; "
        "runpy.run_module('stages.augment', run_name='__main__'); "
        f"print(sorted({{name.split('.')[0] for name in sys.modules}} & set({HEAVY!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert (
        len(list((tmp_path / "data/augmented").rglob("*.jpg")))
        == len(list((tmp_path / "data/split/train").rglob("*.jpg")))
        > 0
    )
