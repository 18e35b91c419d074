"""The study notes' commands: `imageclf summary` (the model table) and `imageclf regression` (the first lesson)."""

import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from imageclf.cli import build_parser
from imageclf.core.errors import UserError
from imageclf.models.classifier import create_model
from imageclf.study.regression import fit_line
from imageclf.study.summary import model_summary

pytestmark = pytest.mark.slow  # each test runs the imageclf command, which loads torch


def run(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["imageclf", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_summary_lists_layers_and_counts_trainable_parameters_per_mode() -> None:
    model = create_model("resnet18", 3, 64, pretrained=False)
    total, head = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.head.parameters())
    frozen = run("summary", "--architecture", "resnet18", "--mode", "transfer_learning", "--image-size", "64")
    assert f"Total params: {total:,}" in frozen and f"Trainable params: {head:,}" in frozen
    assert "BasicBlock" in frozen and "Input: 3 × 64 × 64" in frozen
    tuned = model_summary("resnet18", "fine_tuning", 3, 64)
    assert f"Trainable params: {total:,}" in tuned
    original = model_summary("original", "fromzero", 3)
    assert "[1, 16, 222, 222]" in original and "Input: 3 × 224 × 224" in original
    with pytest.raises(UserError, match="model 'resnet9' is unknown; choices: original, resnet18"):
        model_summary("resnet9", "fromzero", 3)


def test_summary_takes_an_architecture_name_and_predict_a_model_file() -> None:
    parser = build_parser()
    assert parser.parse_args(["summary", "--architecture", "resnet50"]).architecture == "resnet50"
    assert parser.parse_args(["summary", "--model", "resnet50"]).architecture == "resnet50", "the study notes' alias"
    assert parser.parse_args(["predict", "x.jpg", "--model", "m.pt"]).model == Path("m.pt")
    help_text = run("predict", "--help")
    assert "--model FILE" in help_text and "--architecture NAME, --model NAME" in run("summary", "--help")


def test_regression_learns_y_equals_2x_plus_1_and_saves_the_loss_curve(tmp_path: Path) -> None:
    output = run("regression", "--plot", "loss.png", cwd=tmp_path)
    weight, bias = map(float, re.search(r"y = ([-\d.]+)·x \+ ([-\d.]+)", output).groups())
    assert abs(weight - 2) < 0.01 and abs(bias - 1) < 0.01
    with Image.open(tmp_path / "loss.png") as plot:
        assert plot.format == "PNG" and plot.width > 300

    weight, _, losses = fit_line(epochs=3, lr=0.02)
    assert abs(weight - 2) > 0.01 and losses[-1] > 1e-3, "three epochs are not enough: the loop must really learn"
