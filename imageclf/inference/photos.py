"""Photos to class probabilities and none-of-these flags: decode each file (or upload), make its test-time views, run
the predictor on batches and average the views' probabilities; and what a file's name or folder says its class is.

Only PIL and NumPy: `imageclf predict` with an exported model never loads torch.
"""

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from imageclf.data.images import DECODE_ERRORS, Preprocessing, is_image_name, open_rgb
from imageclf.data.views import TTA
from imageclf.inference.predictor import Predictor

# Threads that decode and resize photos while the model runs on the previous batch (PIL releases the GIL). None by
# default: on 2 busy cores they gained nothing (docs/results.md).
DECODE_THREADS = 0


@dataclass(frozen=True)
class ViewTransform:
    """Photo → array of shape (views, 3, size, size), each view resized to the model's input square."""

    preprocessing: Preprocessing
    tta: str

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    def __call__(self, image: Image.Image) -> np.ndarray:
        return np.stack([self.preprocessing(view) for view in TTA[self.tta](image)])


@dataclass(frozen=True)
class Prediction:
    """One file's class probabilities, or why it could not be read (then `probabilities` is None), with the
    none-of-these scores of the photo itself (its first view: the thresholds were set on whole val photos), by
    name, and the names of those under their threshold (`unknown_reason`: empty for a photo of the classes)."""

    path: Path
    probabilities: np.ndarray | None
    error: str = ""
    unknown_scores: dict[str, float] = field(default_factory=dict)
    unknown_reason: tuple[str, ...] = ()


def load_views(source: Path | bytes, transform: ViewTransform) -> tuple[np.ndarray | None, str]:
    """A file's (or upload's) views, or None and why it cannot be decoded: one unreadable file is not fatal."""
    try:
        image = open_rgb(source, min_side=transform.image_size)
    except DECODE_ERRORS as error:
        return None, f"{type(error).__name__}: {error}"
    return transform(image), ""


class InlineExecutor:
    """A stand-in for a thread pool that runs each task when it is submitted (`decode_threads` 0)."""

    def __enter__(self) -> "InlineExecutor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def submit(self, function: Callable, *args: object) -> Future:
        future: Future = Future()
        future.set_result(function(*args))
        return future


def predict_files(
    predictor: Predictor,
    sources: list[Path] | list[bytes],
    tta: str,
    batch_size: int,
    description: str = "predict",
    decode_threads: int = DECODE_THREADS,
) -> Iterator[Prediction]:
    """Class probabilities and none-of-these flags for each file, in order, `batch_size` files per forward pass.

    With `decode_threads`, the next batch is decoded while the model runs on this one.
    """
    transform = ViewTransform(predictor.preprocessing, tta)
    starts = range(0, len(sources), batch_size)
    with ThreadPoolExecutor(decode_threads) if decode_threads else InlineExecutor() as pool:

        def submit(start: int) -> list[Future]:
            return [pool.submit(load_views, source, transform) for source in sources[start : start + batch_size]]

        pending = submit(0) if sources else []
        for start in tqdm(starts, desc=description, unit="batch", disable=None):
            loaded = [future.result() for future in pending]
            pending = submit(start + batch_size) if start + batch_size < len(sources) else []
            readable = [(index, views) for index, (views, _) in enumerate(loaded) if views is not None]
            predicted = {}
            if readable:
                stacked = np.concatenate([views for _, views in readable])
                n_views = len(readable[0][1])
                scored = predictor.predict(stacked)
                averaged = scored.probabilities.reshape(len(readable), n_views, -1).mean(axis=1)
                first = slice(0, len(stacked), n_views)
                names = predictor.unknown_scores
                for (index, _), row, scores, flags in zip(
                    readable, averaged, scored.scores[first], scored.flags[first], strict=True
                ):
                    predicted[index] = Prediction(
                        sources[start + index],
                        row,
                        unknown_scores={name: float(value) for name, value in zip(names, scores, strict=True)},
                        unknown_reason=tuple(name for name, flag in zip(names, flags, strict=True) if flag),
                    )
            for index, (_, error) in enumerate(loaded):
                yield predicted.get(index) or Prediction(sources[start + index], None, error)


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
    """A prediction with its most probable class, confidence, why it is none of the classes (`unknown_reason`, the
    names of the scores that flagged it; empty: it is one of them) and (when the file name or folder tells it) its
    true class."""

    path: Path
    label: str
    confidence: float
    probabilities: dict[str, float]
    true_label: str | None
    unknown_reason: tuple[str, ...] = ()

    @property
    def unknown(self) -> bool:
        return bool(self.unknown_reason)

    def as_json(self) -> dict:
        """The object `imageclf predict --json` prints and `imageclf serve` answers: an unknown photo has `label`
        null, `unknown` true and the scores that flagged it in `unknown_reason`, its class probabilities kept."""
        return {
            "path": str(self.path),
            "label": None if self.unknown else self.label,
            "unknown": self.unknown,
            "unknown_reason": list(self.unknown_reason),
            "confidence": self.confidence,
            "probabilities": self.probabilities,
        } | ({"true_label": self.true_label} if self.true_label else {})


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
        prediction.unknown_reason,
    )


def predict_folder(
    predictor: Predictor, folder: Path, tta: str, batch_size: int, description: str
) -> tuple[list[LabelledResult], list[Prediction]]:
    """The labelled results for the image files under `folder`, and the files that could not be read."""
    found, _ = files_to_predict([folder])
    predictions = list(predict_files(predictor, [path for path, _ in found], tta, batch_size, description=description))
    results = [
        labelled_result(prediction, folder, predictor.classes)
        for prediction in predictions
        if prediction.probabilities is not None
    ]
    return results, [prediction for prediction in predictions if prediction.probabilities is None]
