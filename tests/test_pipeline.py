"""The real `dvc repro` on tiny generated images: outputs, and that a change reruns exactly what depends on it."""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from imageclf.core.cache import CACHE_ENVIRONMENT_VARIABLE
from tests.helpers import CLASSES, dvc_repro, set_params, without_git_identity

ALL_STAGES = {"split", "augment", "train", "evaluate"}


def test_repro_writes_every_output(reproduced_project: Path) -> None:
    project = reproduced_project
    assert json.loads((project / "metrics/split.json").read_text()) == {"images": {"train": 24, "val": 3, "test": 3}}
    split = json.loads((project / "metrics/details/split.json").read_text())
    assert split["images"]["train"] == {"cat": 8, "dog": 8, "horse": 8, "total": 24}
    assert split["images"]["val"]["total"] == split["images"]["test"]["total"] == 3

    train = json.loads((project / "metrics/details/train.json").read_text())
    assert train["epochs"] == 2 and 1 <= train["best_epoch"] <= 2
    headline = json.loads((project / "metrics/train.json").read_text())
    assert headline == {"epochs": 2, "val_loss": train["best"]["val_loss"]}
    assert train["unknown"]["scores"] == ["knn", "imagenet"] and train["unknown"]["val_flagged"] == 0.0, (
        "of 3 val photos"
    )
    for epoch in ("best", "last"):
        assert set(train[epoch]) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"}
    history = (project / "metrics/train_history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr" and len(history) == 3
    assert not (project / "checkpoints/train.pt").exists(), "a finished run leaves no checkpoint behind"

    evaluation = json.loads((project / "metrics/details/evaluate.json").read_text())
    assert 0 <= evaluation["accuracy"] <= 1 and set(evaluation["per_class"]) == set(CLASSES)
    assert json.loads((project / "metrics/evaluate.json").read_text()) == {
        "accuracy": evaluation["accuracy"],
        "macro_f1": evaluation["macro_avg"]["f1"],
        "unknown_share": evaluation["unknown_share"],
    }
    predictions = (project / "metrics/test_predictions.csv").read_text().splitlines()
    assert predictions[0] == "path,actual,predicted,confidence,unknown" and len(predictions) == 4

    saved = torch.load(project / "models/model.pt", weights_only=True)
    assert saved["model"] == "efficientnet_lite0" and saved["classes"] == CLASSES and saved["image_size"] == 32
    assert saved["backbone_precision"] == "int8", "the default model carries its int8 backbone graph"
    digest = hashlib.sha256((project / "models/model.pt").read_bytes()).hexdigest()[:32]
    compiled = Path(os.environ[CACHE_ENVIRONMENT_VARIABLE]) / "models" / f"{digest}.onnx"
    train_written = (project / "metrics/train.json").stat().st_mtime_ns  # the train stage's last write
    assert compiled.stat().st_mtime_ns <= train_written, "train leaves the model compiled for evaluate and predict"

    augmented = list((project / "data/augmented").rglob("*.jpg"))
    assert len(augmented) == 24 * 2

    # Outputs are hard links to DVC's cache (.dvc/config: cache.type): caching thousands of photos copies no bytes,
    # and augment's originals are links to split's files, so they are the cache's files too.
    for image in (*(project / "data/split/train").rglob("*.jpg"), *augmented):
        md5 = hashlib.md5(image.read_bytes()).hexdigest()
        assert image.samefile(project / ".dvc/cache/files/md5" / md5[:2] / md5[2:]), image


def test_repro_with_nothing_changed_runs_nothing(reproduced_project: Path, tmp_path: Path) -> None:
    project = shutil.copytree(reproduced_project, tmp_path / "project", symlinks=True)
    ran, output = dvc_repro(project)
    assert ran == set(), output


# A changed param of each stage reruns it and what lies downstream of it. Which stage reads which param (such as
# data.image_size: split, train, evaluate) is tests/test_dvc_yaml.py's: dvc.yaml lists exactly the keys each reads;
# that split's images change with data.image_size (so augment reruns too) is tests/test_data.py's.
@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("train__lr", 0.01, {"train", "evaluate"}),
        ("augment__seed", 7, {"augment", "train", "evaluate"}),  # with tiny_params' one copy per image
        ("evaluate__batch_size", 4, {"evaluate"}),
        ("split__seed", 7, ALL_STAGES),
    ],
)
def test_a_changed_param_reruns_only_what_depends_on_it(
    reproduced_project: Path, tmp_path: Path, key: str, value: object, expected: set[str]
) -> None:
    project = shutil.copytree(reproduced_project, tmp_path / "project", symlinks=True)
    set_params(project, **{key: value})
    ran, output = dvc_repro(project)
    assert ran == expected, output
    if key == "train__lr":
        assert "features of train: 48 images from the cache, 0 computed" in output, output
        assert "features of test: 3 images from the cache, 0 computed" in output, output


def test_stages_run_the_package_of_the_checkout_they_run_in(reproduced_project: Path, tmp_path: Path) -> None:
    """A copy (a queued experiment, a teammate's clone) runs its own imageclf, not the one pip installed."""
    project = shutil.copytree(reproduced_project, tmp_path / "project", symlinks=True)
    with (project / "imageclf/__init__.py").open("a") as package:
        package.write('raise SystemExit("imported from the copy")\n')
    result = subprocess.run(
        ["dvc", "repro", "--force", "--single-item", "evaluate"], cwd=project, capture_output=True, text=True
    )
    assert result.returncode != 0 and "imported from the copy" in result.stdout + result.stderr


def test_retraining_gives_a_byte_identical_model_and_metrics(reproduced_project: Path, tmp_path: Path) -> None:
    """From a cold feature cache (the backbone computes every feature, the test photos' too) and from the warm
    session cache alike."""
    project = shutil.copytree(reproduced_project, tmp_path / "project", symlinks=True)
    outputs = [
        "models/model.pt",
        "metrics/train.json",
        "metrics/details/train.json",
        "metrics/train_history.csv",
        "metrics/evaluate.json",
        "metrics/details/evaluate.json",
        "metrics/test_predictions.csv",
    ]
    before = {name: (project / name).read_bytes() for name in outputs}
    for cache in (tmp_path / "cold-cache", None):
        env = {**os.environ, CACHE_ENVIRONMENT_VARIABLE: str(cache)} if cache else None
        result = subprocess.run(
            ["dvc", "repro", "--force", "--single-item", "train", "evaluate"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        warm = "features of train: 48 images from the cache, 0 computed" in result.stdout
        assert warm == (cache is None), result.stdout
        warm_test = "features of test: 3 images from the cache, 0 computed" in result.stdout
        assert warm_test == (cache is None), result.stdout
        assert {name: (project / name).read_bytes() for name in outputs} == before


def test_an_experiment_with_a_changed_param_is_compared_with_the_commit(
    reproduced_project: Path, tmp_path: Path
) -> None:
    project = shutil.copytree(reproduced_project, tmp_path / "project", symlinks=True)
    env = without_git_identity(tmp_path / "home")
    subprocess.run(["git", "add", "-A"], cwd=project, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=project, env=env, check=True)
    result = subprocess.run(
        ["dvc", "exp", "run", "-S", "train.lr=0.02"], cwd=project, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ran = {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage '")}
    assert ran == {"train", "evaluate"}

    params = json.loads(
        subprocess.run(
            ["dvc", "params", "diff", "--json"], cwd=project, capture_output=True, text=True, check=True
        ).stdout
    )
    assert list(params["params.yaml"]) == ["train.lr"]
    assert params["params.yaml"]["train.lr"]["old"] == 0.001 and params["params.yaml"]["train.lr"]["new"] == 0.02
    metrics = json.loads(
        subprocess.run(
            ["dvc", "metrics", "diff", "--all", "--json"], cwd=project, capture_output=True, text=True, check=True
        ).stdout
    )
    assert "accuracy" in metrics["metrics/evaluate.json"] and "val_loss" in metrics["metrics/train.json"]
    assert not any(path.startswith("metrics/details/") for path in metrics), "details are outputs, not metrics"
