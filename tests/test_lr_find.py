"""`imageclf lr-find`: the learning-rate range test grows the rate exponentially from 1e-7, smooths the loss,
stops when it diverges, suggests the steepest descent, and leaves the model and checkpoints on disk alone."""

import hashlib
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from imageclf.cli import main
from imageclf.study.lr_find import END_LR, SKIP_END, SKIP_START, START_LR, range_test, steepest_descent


def noisy_batches(seed: int = 0) -> DataLoader:
    """Two classes of 2-d points, a fifth of the labels flipped, scaled up so that large rates overshoot; one
    batch, so that the loss changes only when the weights do."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(64, 2, generator=generator) * 10
    labels = (points[:, 0] > 0).long()
    labels = torch.where(torch.rand(64, generator=generator) < 0.2, 1 - labels, labels)
    return DataLoader(TensorDataset(points, labels), batch_size=64)


def test_the_rate_grows_exponentially_the_loss_is_smoothed_and_the_test_stops_when_it_diverges() -> None:
    torch.manual_seed(0)
    network = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    steps = 200
    test = range_test(network, noisy_batches(), nn.CrossEntropyLoss(), optimizer, steps)

    assert test.lrs[0] == pytest.approx(START_LR)
    ratios = np.array(test.lrs[1:]) / np.array(test.lrs[:-1])
    assert ratios == pytest.approx(np.full(len(ratios), (END_LR / START_LR) ** (1 / (steps - 1))))
    assert len(test.lrs) < steps, "plain SGD on inputs scaled by 10 diverges before lr reaches 10"
    assert max(test.losses) <= 4 * min(test.losses), "the recorded losses stop before 4× the best"
    kept = slice(SKIP_START, len(test.lrs) - SKIP_END)
    slopes = np.gradient(np.array(test.losses[kept]), np.log10(test.lrs[kept]))
    lowest = int(np.argmin(test.losses[kept]))
    assert test.suggestion == test.lrs[kept][int(np.argmin(slopes[: lowest + 1]))]
    assert 1e-3 < test.suggestion < 1, "where plain SGD on this data learns fastest, not at the flat start"
    assert min(test.losses) < test.losses[0] / 2, "the loss fell before it diverged"


def test_the_suggestion_leaves_out_the_first_and_last_steps_as_fastai_does() -> None:
    lrs = list(np.logspace(-7, 1, 60))
    losses = [10.0 - step for step in range(SKIP_START)] + [1.0] * (60 - SKIP_START)  # the settling average
    losses[30:35] = [0.9, 0.7, 0.5, 0.3, 0.2]  # the real descent
    losses[-SKIP_END:] = [0.2, 0.15, 0.1, 0.05, 0.0]  # steep, but in the last steps
    assert steepest_descent(lrs, losses) in lrs[30:35]


def test_a_dip_while_the_loss_diverges_is_not_suggested() -> None:
    """Fine-tuning with small batches: past its lowest point the loss climbs with a steep dip on the way up."""
    lrs = list(np.logspace(-7, 1, 60))
    losses = [1.2] * 60
    losses[25:35] = [1.15, 1.1, 1.05, 1.0, 0.95, 0.93, 0.92, 0.91, 0.9, 0.9]  # the real, gentle descent
    losses[35:] = [1.0 + 0.1 * step for step in range(25)]  # diverging
    losses[45] = 0.95  # a dip far steeper than the descent, after the lowest point
    assert steepest_descent(lrs, losses) in lrs[25:35]


def test_lr_find_suggests_a_rate_and_writes_only_its_plot(reproduced_project: Path, tmp_path: Path) -> None:
    project = shutil.copytree(reproduced_project, tmp_path / "project", symlinks=True)
    (project / "checkpoints").mkdir(exist_ok=True)
    (project / "checkpoints/train.pt").write_bytes(b"a checkpoint")

    def snapshot() -> dict[str, str]:
        return {
            str(path.relative_to(project)): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in ("models", "checkpoints", "metrics")
            for path in sorted((project / folder).rglob("*"))
            if path.is_file()
        }

    before = snapshot()
    command = [sys.executable, "-c", "from imageclf.cli import main; main()", "lr-find", "--steps", "60"]
    result = subprocess.run([*command, "--plot", "out/lr.png"], cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    suggested = re.search(r"suggested: dvc exp run -S train.lr=(\S+)", result.stdout)
    assert suggested and START_LR <= float(suggested.group(1)) <= END_LR and math.isfinite(float(suggested.group(1)))
    assert (project / "out/lr.png").read_bytes().startswith(b"\x89PNG")
    assert snapshot() == before, "the model, checkpoint and metrics are untouched"


def test_lr_find_without_the_augmented_data_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    shutil.copy(Path(__file__).parent.parent / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["lr-find"])
    assert exit_.value.code == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: manifest 'data/augmented/manifest.csv' is missing") and "\n" not in error
