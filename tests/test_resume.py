"""A `dvc repro` killed with SIGKILL mid-training resumes from its last checkpoint and ends as an unbroken run."""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import copy_project, make_image_folder, set_params, tiny_params

pytestmark = pytest.mark.slow  # kills a real dvc repro during training, then resumes it

EPOCHS = 6


def kill_after_first_checkpoint(project: Path, *options: str) -> None:
    """Start `dvc repro [options] train`, wait for the stage's first checkpoint, then SIGKILL dvc and the stage."""
    checkpoint = project / "checkpoints/train.pt"
    process = subprocess.Popen(
        ["dvc", "repro", *options, "train"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert process.poll() is None, "dvc repro ended before the first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def project_with_checkpoints(tmp_path: Path) -> Path:
    """A project that trains the small CNN from zero for six epochs, with a checkpoint after each."""
    params = {
        **tiny_params(make_image_folder(tmp_path / "raw", per_class=6)),
        "data__image_size": 112,
        "train__model": "original",
        "train__mode": "fromzero",
        "train__epochs": EPOCHS,
        "train__checkpoint_every": 1,
    }
    return copy_project(tmp_path / "project", **params)


@pytest.fixture(scope="module")
def killed_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose first `dvc repro train` was killed after its first checkpoint: the stages before train
    have run, train has not finished. Copy it before resuming."""
    project = project_with_checkpoints(tmp_path_factory.mktemp("killed"))
    kill_after_first_checkpoint(project)
    assert (project / "checkpoints/train.pt").exists() and not (project / "models/model.pt").exists()
    return project


def outcome(project: Path) -> tuple[str, str]:
    """The model file's hash and the training metrics."""
    model = hashlib.sha256((project / "models/model.pt").read_bytes()).hexdigest()
    return model, (project / "metrics/details/train.json").read_text()


def repro_train(project: Path, *options: str) -> str:
    """`dvc repro [options] train`: the stages up to train, not evaluate."""
    result = subprocess.run(["dvc", "repro", *options, "train"], cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_a_killed_training_resumes_from_its_checkpoint_unless_a_train_param_changed(
    killed_project: Path, tmp_path: Path
) -> None:
    project = shutil.copytree(killed_project, tmp_path / "project", symlinks=True)
    output = repro_train(project)
    resumed_at = int(re.search(r"resuming from the checkpoint of epoch (\d+)", output).group(1))
    assert 1 <= resumed_at < EPOCHS
    assert not (project / "checkpoints/train.pt").exists(), "the checkpoint is removed once training has ended"
    resumed = outcome(project)

    output = repro_train(project, "--force", "--single-item")
    assert "resuming" not in output
    assert outcome(project) == resumed, "the resumed run must end exactly as an unbroken run"

    set_params(project, train__lr=0.002)
    kill_after_first_checkpoint(project)
    set_params(project, train__lr=0.001)
    output = repro_train(project)
    assert "discarding checkpoint" in output and "resuming" not in output
    assert outcome(project) == resumed


def test_a_killed_training_starts_over_when_the_augmented_images_changed(killed_project: Path, tmp_path: Path) -> None:
    """A new `augment.seed` keeps the augmented manifest (it names each source photo) and changes the pictures."""
    project = shutil.copytree(killed_project, tmp_path / "project", symlinks=True)
    set_params(project, augment__seed=7)
    output = repro_train(project)
    assert "discarding checkpoint" in output and "resuming" not in output
    restarted = outcome(project)

    repro_train(project, "--force", "--single-item")
    assert outcome(project) == restarted, "the restarted run must train from epoch 1 as an unbroken run does"
