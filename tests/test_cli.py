"""The `imageclf` console command, run as a user would."""

import subprocess
from pathlib import Path

from imageclf.models import SavedModel, create_model, preprocessing_for, save_model
from tests.helpers import CLASSES, make_image_folder


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["imageclf", *args], cwd=cwd, capture_output=True, text=True)


def test_predict_prints_a_row_per_image_and_reports_unreadable_files(tmp_path: Path) -> None:
    model = create_model("efficientnet_lite0", 3, 32, pretrained=True).eval()
    save_model(
        tmp_path / "models/model.pt",
        SavedModel(model, "efficientnet_lite0", CLASSES, preprocessing_for("efficientnet_lite0", 32)),
    )
    photos = make_image_folder(tmp_path / "photos", per_class=2)
    (photos / "dog/broken.jpg").write_text("not an image")

    result = run("predict", "photos", cwd=tmp_path)
    assert result.returncode == 1
    rows = [line.split() for line in result.stdout.splitlines()]
    assert len(rows) == 6
    assert all(row[1] in CLASSES and 1 / 3 <= float(row[2]) <= 1 for row in rows)
    assert result.stderr.count("error: cannot read") == 1 and "photos/dog/broken.jpg" in result.stderr

    good = run("predict", "photos/cat/cat_0.jpg", cwd=tmp_path)
    assert good.returncode == 0 and good.stdout.startswith("photos/cat/cat_0.jpg")


def test_predict_names_a_missing_model_or_path(tmp_path: Path) -> None:
    result = run("predict", "x.jpg", "--model", "nothing.pt", cwd=tmp_path)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "error: model file 'nothing.pt' not found: train one with dvc repro, or pass --model PATH"
    )
