"""Every stage process and the `imageclf` program freeze their objects at exit (`program.exit_without_final_collection`)
instead of letting the interpreter's last garbage collections walk torch's: over a second of every stage."""

import os
import subprocess
import sys

import pytest
import yaml

from tests.helpers import PROJECT

# Runs module argv[1] as the program with the remaining arguments; at the very end, says how many objects are frozen
# (registered first, so it runs after every exit handler the program registers).
PROBE = (
    "import atexit, gc, runpy, sys; "
    "atexit.register(lambda: print('frozen objects:', gc.get_freeze_count())); "
    "sys.argv = sys.argv[1:]; "
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


def stage_commands() -> dict[str, list[str]]:
    """Each stage's module and arguments, as dvc.yaml runs them."""
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    return {name: stage["cmd"].split()[2:] for name, stage in stages.items()}


@pytest.mark.slow
def test_every_stage_and_the_imageclf_program_freeze_their_objects_at_exit(tmp_path) -> None:
    """Each program runs in a folder without params.yaml, so it stops at once with its one-line error; the
    handler still runs at exit. All start together: each pays only its imports."""
    commands = {**stage_commands(), "imageclf": ["imageclf", "--help"]}
    assert set(commands) == {"split", "augment", "train", "evaluate", "imageclf"}
    environment = {**os.environ, "PYTHONPATH": str(PROJECT)}
    running = {
        name: subprocess.Popen(
            [sys.executable, "-c", PROBE, *command],
            cwd=tmp_path,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, command in commands.items()
    }
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        frozen = [line for line in out.splitlines() if line.startswith("frozen objects:")]
        assert frozen, f"{name}: no exit report; stderr: {err[-500:]}"
        assert int(frozen[-1].split(":")[1]) > 10_000, f"{name} did not freeze its objects at exit"
        if name != "imageclf":
            assert err.strip() == "error: params.yaml not found: run from the project root, where params.yaml is"
