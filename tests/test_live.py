"""Live curves: the train stage rewrites its history and metrics after every epoch, so a running experiment's
progress shows in `dvc exp show` and `dvc plots show`, and a run killed after epoch k leaves k complete rows."""

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import set_params

ROWS_BEFORE_KILL = 3


def test_a_run_killed_after_epoch_k_leaves_a_history_of_k_rows(reproduced_project: Path, tmp_path: Path) -> None:
    project = shutil.copytree(reproduced_project, tmp_path / "project", symlinks=True)
    for output in ("metrics/train_history.csv", "metrics/train.json", "metrics/details/train.json", "models/model.pt"):
        (project / output).unlink()
    set_params(  # a run that would go on for hours: only the kill ends it
        project,
        train__epochs=100_000,
        train__early_stopping={"monitor": "val_loss", "patience": 0, "min_delta": 0.0},
        train__checkpoint_every=0,
    )
    history, headline = project / "metrics/train_history.csv", project / "metrics/train.json"
    details = project / "metrics/details/train.json"
    outputs = ["models/model.pt", str(headline), str(details), str(history), "checkpoints/train.pt", "time.json"]
    command = [sys.executable, "-m", "stages.train", "data/augmented", "data/split/val", *outputs]
    training = subprocess.Popen(command, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (history.is_file() and len(history.read_text().splitlines()) > ROWS_BEFORE_KILL):
            assert training.poll() is None, "training ended before it was killed"
            assert time.monotonic() < deadline, "no per-epoch history appeared while training ran"
            time.sleep(0.01)
    finally:
        training.send_signal(signal.SIGKILL)
        training.wait()

    rows = list(csv.DictReader(history.open()))
    epochs = len(rows)
    assert epochs >= ROWS_BEFORE_KILL
    assert [int(row["epoch"]) for row in rows] == list(range(1, epochs + 1)), "one complete row per epoch"
    assert all(0 <= float(row["val_accuracy"]) <= 1 for row in rows)
    written = json.loads(headline.read_text())["epochs"]
    # the headline is written right after the history and the details: a kill between them leaves it one epoch behind
    assert written in (epochs - 1, epochs) and json.loads(details.read_text())["epochs"] in (written, written + 1)
    assert not (project / "models/model.pt").exists(), "the model is written once, when training ends"
