"""Test helpers: tiny generated image folders and throwaway copies of the project for real `dvc repro` runs."""

import dataclasses
import io
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw, ImageFont

from imageclf.core.config import load
from imageclf.core.device import CPU
from imageclf.data.datasets import ImageDataset
from imageclf.data.params import DataParams
from imageclf.data.splitting import make_split
from imageclf.models.classifier import Classifier
from imageclf.models.model_file import save_model
from imageclf.training.loop import FitResult
from imageclf.training.params import TrainParams
from imageclf.training.setup import Run
from imageclf.training.train import train_from_params, train_run

PROJECT = Path(__file__).resolve().parent.parent
CLASSES = ["cat", "dog", "horse"]
CLASS_COLOURS = {"cat": (200, 60, 60), "dog": (60, 200, 60), "horse": (60, 60, 200)}


def make_image_folder(root: Path, per_class: int = 10, size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """An ImageFolder of small noisy JPEGs whose colour tells the class, so a model can learn it fast."""
    rng = np.random.default_rng(seed)
    for label, colour in CLASS_COLOURS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            noise = rng.normal(0, 40, (size[1], size[0], 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{label}_{index}.jpg", quality=90)
    return root


def project_files() -> list[str]:
    """The project's files as git sees them (tracked, or untracked and not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    return [name for name in listed if name and (PROJECT / name).is_file()]


def copy_project(destination: Path, **params: object) -> Path:
    """A fresh git + DVC repository holding the project's code, with `params` (`"train.lr": 0.01`) set."""
    for name in project_files():
        if name.startswith(("data/", "metrics/", "models/")) or name == "dvc.lock":
            continue
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT / name, destination / name)
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True)
    set_params(destination, **params)
    return destination


def train_config(**changes: object) -> TrainParams:
    """The shipped `train` params with `changes` (for calling the training functions directly), and a fixed
    `weight_decay` unless changed: `fit` trains one head with a given L2 strength; choosing it is its caller's job."""
    return dataclasses.replace(load(TrainParams, PROJECT / "params.yaml"), **{"weight_decay": 0.0, **changes})


def train_classifier(
    classifier: Classifier,
    train_data: ImageDataset,
    val_data: ImageDataset,
    config: TrainParams,
    device: torch.device = CPU,
) -> FitResult:
    """Train an already built classifier on already read datasets as the train stage would (`train_run`)."""
    data = DataParams("", CLASSES, train_data.preprocess.image_size)
    return train_run(Run(data, config, config.training_mode, classifier, train_data, val_data, device))[0]


def set_params(project: Path, **params: object) -> None:
    """Set `section.key` values in a project's params.yaml (keyword names use `__` for the dot)."""
    path = project / "params.yaml"
    values = yaml.safe_load(path.read_text())
    for key, value in params.items():
        section, name = key.split("__", 1)
        values[section][name] = value
    path.write_text(yaml.safe_dump(values, sort_keys=False))


def tiny_params(raw_dir: Path) -> dict:
    """Params that make a full pipeline run take seconds."""
    return {
        "data__raw_dir": str(raw_dir),
        "data__image_size": 32,
        "augment__copies": 1,
        "train__epochs": 2,
        "train__batch_size": 8,
        "evaluate__batch_size": 8,
    }


def dvc_repro(project: Path, *targets: str) -> tuple[set[str], str]:
    """Run the real `dvc repro [targets]`; return the stages it ran and its output."""
    result = subprocess.run(["dvc", "repro", *targets], cwd=project, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}
    return ran, output


@dataclass(frozen=True)
class SampleModel:
    """A model the train stage's code trained on the embedded sample: its file, its split folder, its train details."""

    path: Path
    split: Path
    details: dict


def train_on_sample(root: Path) -> SampleModel:
    """Split the embedded sample (93 photos) and train Lite0's head on it as the train stage does, at 128 px with a
    learning rate that fits it in seconds: a real model with the unknown threshold it chose on its 9 val photos."""
    make_split(PROJECT / "data/sample", CLASSES, 128, 0.1, 0.1, 0, root / "split")
    data = dataclasses.replace(load(DataParams, PROJECT / "params.yaml"), image_size=128)
    train = train_config(epochs=60, lr=0.01)
    saved, result = train_from_params(data, train, root / "split/train", root / "split/val")
    save_model(root / "models/model.pt", saved)
    return SampleModel(root / "models/model.pt", root / "split", result.details())


def none_of_the_classes() -> dict[str, bytes]:
    """PNG images far from any cat, dog or horse: plain grey and red squares, uniform noise and rendered text."""
    text = Image.new("RGB", (160, 120), "white")
    draw = ImageDraw.Draw(text)
    for line in range(4):
        draw.text((6, 6 + 28 * line), "cat dog horse 123", fill="black", font=ImageFont.load_default(size=16))
    images = {
        "grey.png": Image.new("RGB", (128, 128), (128, 128, 128)),
        "red.png": Image.new("RGB", (128, 96), (220, 20, 20)),
        "noise.png": Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)),
        "text.png": text,
    }
    encoded = {}
    for name, image in images.items():
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        encoded[name] = buffer.getvalue()
    return encoded


def without_git_identity(home: Path) -> dict[str, str]:
    """An environment with no global git config (like a fresh CI machine), naming an author for commits."""
    home.mkdir(exist_ok=True)
    identity = {
        f"GIT_{role}_{field}": value
        for role in ("AUTHOR", "COMMITTER")
        for field, value in (("NAME", "test"), ("EMAIL", "test@example.com"))
    }
    return {**os.environ, "HOME": str(home), **identity}
