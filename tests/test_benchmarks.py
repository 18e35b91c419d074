"""The prepared benchmarks run: the mixed-precision check reports that both settings train; the training benchmark
times a step and the train stage's epoch and counts FLOPs; the evaluate-inputs benchmark times both ways."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imageclf.core.cache import CACHE_ENVIRONMENT_VARIABLE
from imageclf.data.manifest import read_manifest
from imageclf.data.splitting import make_split
from imageclf.training.precision import MIN_SPEEDUP
from tests.helpers import CLASSES, PROJECT, make_image_folder

pytestmark = pytest.mark.slow  # runs the benchmark scripts, which fine-tune a model


def test_the_amp_benchmark_fine_tunes_with_and_without_mixed_precision(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "photos", per_class=8)
    command = [sys.executable, "benchmarks/amp.py", "--folder", str(folder), "--image-size", "32", "--epochs", "2"]
    cache = {**os.environ, CACHE_ENVIRONMENT_VARIABLE: str(tmp_path / "cache")}
    result = subprocess.run([*command, "--device", "cpu"], cwd=PROJECT, capture_output=True, text=True, env=cache)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == 24 and report["model"] == "efficientnet_lite0"
    assert [run["amp"] for run in report["results"]] == [False, True]
    for run in report["results"]:
        assert run["trains"] and len(run["train_loss_per_epoch"]) == 2 and run["images_per_second"] > 0
    (rates,) = json.loads((tmp_path / "cache/precision.json").read_text()).values()  # measured for the amp run
    faster = rates["bfloat16"] >= MIN_SPEEDUP * rates["float32"]
    assert [run["precision"] for run in report["results"]] == ["float32", "bfloat16" if faster else "float32"]


def test_the_amp_benchmark_names_a_missing_folder_in_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "benchmarks/amp.py", "--folder", str(tmp_path / "missing"), "--device", "cpu"]
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True)
    assert result.returncode == 1
    missing = tmp_path / "missing"
    expected = f"error: --folder '{missing}' is not a folder: give one with a subfolder per class"
    assert result.stderr.strip().splitlines() == [expected]


def test_the_training_benchmark_times_a_step_and_the_train_stages_epoch() -> None:
    command = [
        sys.executable,
        "benchmarks/training.py",
        "--setting",
        "resnet18:32",
        "--batch",
        "4",
        "--steps",
        "2",
        "--rounds",
        "2",
    ]
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    whole, last = json.loads(result.stdout)["rows"]
    assert whole["setting"] == "resnet18 32 px whole" and last["setting"] == "resnet18 32 px last 1"
    # resnet18's forward at 32 px is 1.82 GMAC × (32/224)² ≈ 0.037 GMAC: training ≈ 3 × 2 × that
    assert 0.2 < whole["gflop_per_image"] < 0.25 and last["gflop_per_image"] < whole["gflop_per_image"] / 3
    assert whole["images_per_second"] > 0 and whole["epoch_images_per_second"] > 0
    # the figures are printed rounded (images/s to 0.1, GFLOP to 0.001): a ratio or product of them agrees within
    # what that rounding allows, however slow a busy machine makes the rates
    step, epoch, flop = whole["images_per_second"], whole["epoch_images_per_second"], whole["gflop_per_image"]
    assert (
        (epoch - 0.05) / (step + 0.05) - 0.005 <= whole["epoch_to_step_ratio"] <= (epoch + 0.05) / (step - 0.05) + 0.005
    )
    assert (flop - 0.0005) * (step - 0.05) - 0.05 <= whole["gflops"] <= (flop + 0.0005) * (step + 0.05) + 0.05


def test_the_training_benchmark_times_the_compiled_network_in_each_precision_asked_for() -> None:
    command = [sys.executable, "benchmarks/training.py", "--setting", "original:112", "--batch", "4", "--steps", "1"]
    result = subprocess.run([*command, "--bf16", "--compile"], cwd=PROJECT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = {row["setting"]: row for row in json.loads(result.stdout)["rows"]}
    compiled = ["original 112 px whole compiled", "original 112 px whole compiled bf16"]
    assert list(rows) == ["original 112 px whole", "original 112 px whole bf16", *compiled]
    # the same network, compiled: the same FLOPs, and it trains
    assert all(rows[name]["gflop_per_image"] == rows["original 112 px whole"]["gflop_per_image"] for name in compiled)
    assert all(rows[name]["images_per_second"] > 0 for name in compiled)


def test_the_evaluate_inputs_benchmark_times_the_store_and_decoding_on_the_same_pixels(tmp_path: Path) -> None:
    """It times both ways on a split, checks inside that they give the same pixels, and leaves the user's cache be."""
    split = tmp_path / "split"
    make_split(make_image_folder(tmp_path / "photos"), CLASSES, 32, 0.1, 0.1, 0, split)
    command = [sys.executable, "benchmarks/evaluate_inputs.py", "--split", str(split), "--image-size", "32"]
    cache = {**os.environ, CACHE_ENVIRONMENT_VARIABLE: str(tmp_path / "user-cache")}
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, env=cache)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["test_photos"] == len(read_manifest(split / "test")) and report["store_photos"] == 30
    assert all(report[key] > 0 for key in ("store_first_evaluate_s", "store_later_evaluate_s", "decoding_s"))
    assert not (tmp_path / "user-cache").exists()
