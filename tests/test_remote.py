"""Sharing data and models through a DVC remote: push from one clone, pull into another, nothing to rerun."""

import shutil
import subprocess
from pathlib import Path

from tests.helpers import dvc_repro, without_git_identity

SHARED_FOLDERS = ("data", "models", "metrics")


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run a command; return its output, failing the test with that output if it fails."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def shared_files(project: Path) -> dict[str, bytes]:
    """Every file the pipeline wrote (or git holds) under data/, models/ and metrics/, by relative path."""
    return {
        str(path.relative_to(project)): path.read_bytes()
        for folder in SHARED_FOLDERS
        for path in sorted((project / folder).rglob("*"))
        if path.is_file()
    }


def test_a_clone_pulls_the_outputs_from_the_remote_and_has_nothing_to_rerun(
    reproduced_project: Path, tmp_path: Path
) -> None:
    project = shutil.copytree(reproduced_project, tmp_path / "project", symlinks=True)
    env = without_git_identity(tmp_path / "home")
    storage = tmp_path / "storage"
    run(["dvc", "remote", "add", "-d", "store", str(storage)], project, env)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "pipeline outputs and the shared remote"], project, env)
    pushed = run(["dvc", "push"], project, env)
    assert "files pushed" in pushed and any(storage.rglob("*")), pushed
    shutil.rmtree(project / ".dvc" / "cache")  # so the clone can only get the outputs from the remote

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    assert not (clone / "models/model.pt").exists(), "outputs travel through the remote, not through git"
    pulled = run(["dvc", "pull"], clone, env)
    assert "files fetched" in pulled, pulled

    assert "Data and pipelines are up to date." in run(["dvc", "status"], clone, env)
    ran, output = dvc_repro(clone)
    assert ran == set(), output
    pulled_files = shared_files(clone)
    assert {"models/model.pt", "metrics/evaluate.json"} <= set(pulled_files)
    assert pulled_files == shared_files(project), "the pulled outputs are byte for byte the pushed ones"
