"""Inference: the one code path from image files to class probabilities, used by evaluate and `imageclf predict`.

Images are decoded with `open_rgb`, turned into one or more views (`views.TTA`), batched, and the softmax of the
views is averaged.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from imageclf.device import loader_options, select_device
from imageclf.images import Preprocessing, is_image_name, open_rgb
from imageclf.metrics import classification_scores
from imageclf.models import SavedModel
from imageclf.views import TTA

DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ViewTransform:
    """Photo → tensor of shape (views, 3, size, size), each view resized to the model's input square."""

    preprocessing: Preprocessing
    tta: str

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.stack([self.preprocessing(view) for view in TTA[self.tta](image)])


@dataclass(frozen=True)
class Prediction:
    """One file's class probabilities, or why it could not be read (then `probabilities` is None)."""

    path: Path
    probabilities: np.ndarray | None
    error: str = ""


class ImageFiles(Dataset):
    """Image files as (index, views tensor or None, error message); a file that cannot be decoded is not fatal."""

    def __init__(self, paths: list[Path], transform: ViewTransform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            image = open_rgb(self.paths[index], min_side=self.transform.image_size)
        except DECODE_ERRORS as error:
            return index, None, f"{type(error).__name__}: {error}"
        return index, self.transform(image), ""


@torch.inference_mode()
def predict_files(
    saved: SavedModel,
    paths: list[Path],
    tta: str,
    batch_size: int,
    device: torch.device | None = None,
    description: str = "predict",
) -> Iterator[Prediction]:
    """Class probabilities for each file, in order, `batch_size` files per forward pass."""
    device = device or select_device()
    model = saved.model.eval().to(device, memory_format=torch.channels_last)
    loader = DataLoader(
        ImageFiles(paths, ViewTransform(saved.preprocessing, tta)),
        batch_size,
        collate_fn=list,
        **loader_options(device),
    )
    for batch in tqdm(loader, desc=description, unit="batch", disable=None):
        readable = [(index, tensor) for index, tensor, _ in batch if tensor is not None]
        probabilities = {}
        if readable:
            stacked = torch.stack([tensor for _, tensor in readable])
            n_images, n_views = stacked.shape[:2]
            logits = model(stacked.flatten(0, 1).to(device, memory_format=torch.channels_last)).float()
            averaged = logits.softmax(dim=1).view(n_images, n_views, -1).mean(dim=1).cpu().numpy()
            probabilities = {index: row for (index, _), row in zip(readable, averaged, strict=True)}
        for index, _, error in batch:
            yield Prediction(paths[index], probabilities.get(index), error)


def files_to_predict(targets: list[Path]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """The files `imageclf predict PATH...` classifies: (image file, the PATH it was found under) pairs, and one
    error per missing path or imageless folder (unlike `folders.find_images`, no class folders are required).

    Folders are searched recursively for image file names; a file named directly is taken whatever its name.
    """
    found, errors = [], []
    for target in targets:
        if target.is_dir():
            files = sorted(path for path in target.rglob("*") if path.is_file() and is_image_name(path))
            if not files:
                errors.append(f"'{target}' holds no image files (.jpg, .png, .webp, .bmp, ...)")
            found += [(path, target) for path in files]
        elif target.is_file():
            found.append((target, target))
        else:
            errors.append(f"'{target}' does not exist")
    return found, errors


def label_from_path(path: Path, target: Path, classes: list[str]) -> str | None:
    """The class a file is labelled with, or None: its name starts with `<class>_` (`dog_multiple.jpg`), or a
    folder between it and `target` (or `target` itself) is named after a class. Case does not matter."""
    by_name = {label.lower(): label for label in classes}
    stem = path.stem.lower()
    for name, label in by_name.items():
        if stem.startswith(f"{name}_"):
            return label
    folder = path.parent
    stop = target if target.is_dir() else target.parent
    while True:
        if folder.name.lower() in by_name:
            return by_name[folder.name.lower()]
        if folder == stop or folder == folder.parent:
            return None
        folder = folder.parent


@dataclass(frozen=True)
class LabelledResult:
    """A prediction with its class, confidence and (when the file name or folder tells it) its true class."""

    path: Path
    label: str
    confidence: float
    probabilities: dict[str, float]
    true_label: str | None


def labelled_result(prediction: Prediction, target: Path, classes: list[str]) -> LabelledResult:
    """A readable file's prediction, its classes named in the model's (training) order."""
    probabilities = prediction.probabilities
    best = int(np.argmax(probabilities))
    return LabelledResult(
        prediction.path,
        classes[best],
        float(probabilities[best]),
        {label: float(p) for label, p in zip(classes, probabilities, strict=True)},
        label_from_path(prediction.path, target, classes),
    )


def labelled_scores(results: list[LabelledResult], classes: list[str], unreadable: int = 0) -> dict | None:
    """`classification_scores` over the results that carry a true label; None when none does."""
    labelled = [result for result in results if result.true_label is not None]
    if not labelled:
        return None
    return classification_scores(
        [result.true_label for result in labelled],
        np.array([[result.probabilities[label] for label in classes] for result in labelled]),
        classes,
        [str(result.path) for result in labelled],
        unlabelled=len(results) - len(labelled),
        unreadable=unreadable,
    )


def predict_folder(
    saved: SavedModel, folder: Path, tta: str, batch_size: int, description: str
) -> tuple[list[LabelledResult], list[Prediction]]:
    """The labelled results for the image files under `folder`, and the files that could not be read."""
    found, _ = files_to_predict([folder])
    predictions = list(predict_files(saved, [path for path, _ in found], tta, batch_size, description=description))
    results = [
        labelled_result(prediction, folder, saved.classes)
        for prediction in predictions
        if prediction.probabilities is not None
    ]
    return results, [prediction for prediction in predictions if prediction.probabilities is None]
