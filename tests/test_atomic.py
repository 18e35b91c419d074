"""A stage killed while it writes leaves no output that looks complete: DVC sees the stage as changed and reruns it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imageclf.data.manifest import MANIFEST_NAME, read_manifest
from tests.helpers import PROJECT, copy_project, make_image_folder, set_params, tiny_params

# Writes `4 × LIMIT` bytes with write_atomic under a file size limit of LIMIT bytes: the kernel kills the process
# with SIGXFSZ (which Python ignores unless told otherwise) when a write reaches the limit, as abruptly as SIGKILL
# (no handler, no cleanup) and at the same byte on every run, so the write is cut short whatever the machine's speed.
KILLED_WRITER = """
import resource, signal, sys
from pathlib import Path
from imageclf.core.files import write_atomic
limit = int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
write_atomic(Path(sys.argv[1]), b"new!" * limit)
"""


def test_a_write_killed_halfway_leaves_the_old_file(tmp_path: Path) -> None:
    target, limit = tmp_path / "model.pt", 1 << 20
    old = b"old." * limit
    target.write_bytes(old)
    writer = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(target), str(limit)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
        capture_output=True,
    )
    assert writer.returncode == -signal.SIGXFSZ, writer.stderr.decode()
    assert target.read_bytes() == old, "the killed write left a part of the new content in the target"


pytestmark = pytest.mark.slow  # kills real dvc repro runs part way


def repro(project: Path, stage: str) -> set[str]:
    """Run the real `dvc repro STAGE`; return the stages it ran."""
    result = subprocess.run(["dvc", "repro", stage], cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after `dvc repro augment` on enough tiny images that writing the outputs takes a while."""
    root = tmp_path_factory.mktemp("atomic")
    raw = make_image_folder(root / "raw", per_class=100, size=(40, 32))
    project = copy_project(root / "project", **tiny_params(raw))
    assert repro(project, "augment") == {"split", "augment"}
    return project


def kill_while_writing(project: Path, stage: str, watched: Path) -> None:
    """Start `dvc repro STAGE` and SIGKILL it and its children as soon as a temporary output appears in `watched`."""
    process = subprocess.Popen(
        ["dvc", "repro", stage],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if watched.is_dir() and any(name.endswith(".tmp") for name in os.listdir(watched)):
            break
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, f"dvc repro {stage} ended before it wrote anything"


def assert_complete_or_absent(folder: Path) -> None:
    """A split or augmented folder is either missing or holds exactly the images its manifest lists."""
    if not folder.exists():
        return
    listed = {record.path for record in read_manifest(folder)}
    present = {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()} - {MANIFEST_NAME}
    assert present == listed and listed, f"{folder} is half written"


def status(project: Path, stage: str) -> str:
    result = subprocess.run(["dvc", "status", stage], cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("stage", "param", "watched", "outputs"),
    [
        ("split", "split__seed", "data/split", ["data/split/train", "data/split/val", "data/split/test"]),
        ("augment", "augment__seed", "data", ["data/augmented"]),
    ],
)
def test_a_killed_stage_leaves_nothing_half_written(
    project: Path, stage: str, param: str, watched: str, outputs: list[str]
) -> None:
    set_params(project, **{param: 7})
    kill_while_writing(project, stage, project / watched)

    for output in outputs:
        assert_complete_or_absent(project / output)
    for file in ("metrics/split.json", "metrics/details/split.json", "data/split/rejected.csv"):
        if stage == "split" and (project / file).exists():
            pytest.fail(f"{file} exists although split was killed before it finished")
    assert f"{stage}:" in status(project, stage), "DVC takes the killed stage as up to date"

    assert repro(project, stage) == {stage}
    assert "up to date" in status(project, stage)
    assert not [name for name in os.listdir(project / watched) if name.endswith(".tmp")]
    if stage == "split":
        assert json.loads((project / "metrics/split.json").read_text())["images"]["test"] == 30
