"""A hyperparameter sweep through DVC's experiment queue, run two at a time and compared with `dvc exp show`."""

import json
import shutil
import subprocess
from pathlib import Path

from tests.helpers import without_git_identity


def run(command: list[str], project: Path, env: dict[str, str], timeout: float = 60) -> str:
    """Run a command in the project; return its output, failing the test with that output if it fails."""
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_a_queued_sweep_runs_two_at_a_time_and_exp_show_compares_it(reproduced_project: Path, tmp_path: Path) -> None:
    project = shutil.copytree(reproduced_project, tmp_path / "project", symlinks=True)
    env = without_git_identity(tmp_path / "home")
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "baseline"], project, env)

    queued = run(["dvc", "exp", "run", "--queue", "-S", "train.lr=0.003,0.03"], project, env)
    assert queued.count("Queued experiment") == 2, queued
    try:
        output = run(["dvc", "exp", "run", "--run-all", "-j", "2"], project, env, timeout=600)
    finally:
        run(["dvc", "queue", "stop"], project, env)  # the workers would otherwise idle on for a while
    assert "Failed to reproduce" not in output, output
    assert output.count("Running stage 'train'") == output.count("Running stage 'evaluate'") == 2, output
    assert "Running stage 'split'" not in output and "Running stage 'augment'" not in output, output

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project, env))
    baseline = next(entry for entry in shown if entry["rev"] != "workspace")
    runs = [experiment["revs"][0] for experiment in baseline["experiments"]]
    assert [entry["error"] for entry in runs] == [None, None]
    lrs = {entry["data"]["params"]["params.yaml"]["data"]["train"]["lr"]: entry["data"]["metrics"] for entry in runs}
    assert set(lrs) == {0.003, 0.03}
    for metrics in lrs.values():
        assert 0 <= metrics["metrics/evaluate.json"]["data"]["accuracy"] <= 1
        assert metrics["metrics/train.json"]["data"]["epochs"] == 2
    val_losses = {lr: metrics["metrics/train.json"]["data"]["val_loss"] for lr, metrics in lrs.items()} | {
        0.001: baseline["data"]["metrics"]["metrics/train.json"]["data"]["val_loss"]
    }
    assert len(set(val_losses.values())) == 3, f"each learning rate trains differently: {val_losses}"
