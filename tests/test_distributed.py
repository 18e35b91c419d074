"""The train stage under torchrun: two CPU processes (gloo) train as one process does, and only one writes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import copy_project, make_image_folder, tiny_params

pytestmark = pytest.mark.slow  # trains under torchrun, two processes

TOLERANCE = 1e-4  # summation order differs between one process and two, so results agree to rounding only


def train(project: Path, output: str, *launcher: str) -> subprocess.CompletedProcess:
    folder = project / output
    names = ("model.pt", "train.json", "details.json", "history.csv", "checkpoint.pt", "time.json")
    outputs = [folder / name for name in names]
    command = [*launcher, "-m", "stages.train", "data/augmented", "data/split/val", *map(str, outputs)]
    result = subprocess.run(command, cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_two_processes_under_torchrun_match_one_process(tmp_path: Path) -> None:
    params = {
        **tiny_params(make_image_folder(tmp_path / "raw")),
        "data__image_size": 112,
        "train__model": "original",
        "train__mode": "fromzero",
        "train__epochs": 2,
        "train__batch_size": 64,  # one batch holds all 48 training images: the same gradient however it is shared
        "train__checkpoint_every": 0,
        # plain SGD is linear in the gradient: a wrongly summed or unsynchronised gradient shows in the weights,
        # where Adam's per-weight normalisation would hide a scale error and magnify rounding noise
        "train__optimizer": "sgd",
        "train__lr": 0.01,
    }
    project = copy_project(tmp_path / "project", **params)
    subprocess.run(["dvc", "repro", "augment"], cwd=project, check=True, capture_output=True)

    train(project, "single", sys.executable)
    distributed = train(
        project, "ddp", sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"
    )

    single = json.loads((project / "single/details.json").read_text())
    both = json.loads((project / "ddp/details.json").read_text())
    assert both["epochs"] == single["epochs"] == 2 and both["best_epoch"] == single["best_epoch"]
    for epoch in ("best", "last"):
        for key, value in single[epoch].items():
            assert both[epoch][key] == pytest.approx(value, rel=TOLERANCE, abs=TOLERANCE), (epoch, key)
    single_weights = torch.load(project / "single/model.pt", weights_only=True)["state_dict"]
    both_weights = torch.load(project / "ddp/model.pt", weights_only=True)["state_dict"]
    differences = {name: (both_weights[name] - tensor).abs().max().item() for name, tensor in single_weights.items()}
    assert max(differences.values()) <= TOLERANCE, sorted(differences.items(), key=lambda item: -item[1])[:5]
    assert not list((project / "ddp").glob("*.tmp*")) and "Traceback" not in distributed.stderr
