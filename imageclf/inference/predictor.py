"""Inference: the one code path from image files to class probabilities, used by evaluate, `imageclf predict` and
`imageclf serve`.

A `Predictor` is a model reduced to what prediction needs: class names, preprocessing and a function from a
float32 NCHW batch to class probabilities. It comes from a model file the train stage wrote (`model.pt`) or from
an `imageclf export` file (`.onnx`, OpenVINO `.xml`). Images are decoded with `open_rgb` on a pool of threads,
turned into one or more views (`views.TTA`), batched, and the probabilities of the views are averaged.

Only PIL and NumPy are imported here: an exported model never loads torch. A `model.pt` is exported to ONNX once
(which needs torch) and the ONNX file is cached by the model file's content hash, so later calls skip torch too.
"""

import hashlib
import importlib
import importlib.util
import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from imageclf.backbone.engines import BatchFunction, cpu_threads, onnxruntime_session, openvino_function
from imageclf.core.cache import cache_dir
from imageclf.core.errors import UserError
from imageclf.core.files import write_atomic
from imageclf.data.images import DECODE_ERRORS, Preprocessing, is_image_name, open_rgb
from imageclf.data.views import TTA
from imageclf.evaluation.metrics import classification_scores

# Where `imageclf export` puts its metadata: ONNX `metadata_props` and OpenVINO `rt_info`, one JSON text each.
METADATA_KEY = "imageclf"
# Threads that decode and resize photos while the model runs on the previous batch (PIL releases the GIL). None by
# default: on 2 busy cores they gained nothing (1,320 photos, model.pt: 37/44/54 s with 0/1/2; later 53/52 s with 0/2).
DECODE_THREADS = 0


@dataclass(frozen=True)
class Predictor:
    """A model ready to predict: `forward` maps a preprocessed batch to its outputs, probabilities when
    `outputs_probabilities`, else logits (softmax is applied here). A photo whose top probability is under
    `unknown_threshold` is none of the classes (`is_unknown`); None: every photo is one of them."""

    name: str
    classes: list[str]
    preprocessing: Preprocessing
    forward: BatchFunction
    outputs_probabilities: bool
    unknown_threshold: float | None = None

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        outputs = np.asarray(self.forward(batch), dtype=np.float32)
        if self.outputs_probabilities:
            return outputs
        exponentials = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        return exponentials / exponentials.sum(axis=1, keepdims=True)


def is_unknown(confidence: float, threshold: float | None) -> bool:
    """Whether a photo is none of the classes: its top probability is under the threshold the train stage chose."""
    return threshold is not None and confidence < threshold


def export_metadata(
    name: str,
    classes: list[str],
    preprocessing: Preprocessing,
    softmax: bool,
    precision: str,
    unknown_threshold: float | None = None,
) -> str:
    """The JSON text an export carries: all another program needs to feed the model and read its output."""
    return json.dumps(
        {
            "model": name,
            "classes": list(classes),
            "image_size": preprocessing.image_size,
            "mean": list(preprocessing.mean),
            "std": list(preprocessing.std),
            "input": "images: float32 NCHW RGB; the whole photo resized to image_size x image_size (bicubic), "
            "scaled to 0..1, then (x - mean) / std per channel",
            "output": "probabilities (softmax)" if softmax else "logits (apply softmax)",
            "softmax": softmax,
            "precision": precision,
            "unknown_threshold": unknown_threshold,
            "unknown": "a photo whose highest probability is under unknown_threshold is none of the classes "
            "(null: no threshold)",
        }
    )


def predictor_from_metadata(path: Path, text: str | None, forward: BatchFunction, outputs: int | None) -> Predictor:
    """The predictor of an exported file, refused with one line when its metadata is missing or does not fit."""
    if not text:
        raise UserError(
            f"'{path}' has no {METADATA_KEY} metadata: it was not written by imageclf export; "
            "export the model with imageclf export --model models/model.pt"
        )
    try:
        metadata = json.loads(text)
        preprocessing = Preprocessing(metadata["image_size"], tuple(metadata["mean"]), tuple(metadata["std"]))
        classes, softmax = list(metadata["classes"]), bool(metadata["softmax"])
        threshold = metadata.get("unknown_threshold")
        threshold = None if threshold is None else float(threshold)
    except (ValueError, KeyError, TypeError):
        raise UserError(f"'{path}' has damaged {METADATA_KEY} metadata: export it again with imageclf export") from None
    if isinstance(outputs, int) and outputs != len(classes):
        raise UserError(
            f"'{path}' outputs {outputs} classes but its metadata names {len(classes)}: export it again with "
            "imageclf export"
        )
    return Predictor(metadata.get("model", path.stem), classes, preprocessing, forward, softmax, threshold)


def require_module(module: str, package: str, path: Path) -> None:
    """Raise UserError naming the package `path` needs and how to do without it, unless `module` imports."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"'{path}' needs {module}, which is not installed: pip install {package}, or predict with the "
            "model.pt it was exported from (--model models/model.pt)"
        ) from None


def onnx_predictor(path: Path) -> Predictor:
    """An `imageclf export --format onnx` file, on ONNX Runtime."""
    require_module("onnxruntime", "onnxruntime", path)
    try:
        session = onnxruntime_session(path, cpu_threads())
    except Exception as error:  # ONNX Runtime raises its own exception types for unreadable graphs
        raise UserError(
            f"'{path}' is not a readable ONNX model ({type(error).__name__}): export it again with imageclf export"
        ) from None
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    name = session.get_inputs()[0].name
    return predictor_from_metadata(
        path, text, lambda batch: session.run(None, {name: batch})[0], session.get_outputs()[0].shape[-1]
    )


def openvino_predictor(path: Path) -> Predictor:
    """An `imageclf export --format openvino` file (`.xml` with its `.bin` beside it), on OpenVINO."""
    require_module("openvino", "openvino", path)
    import openvino

    try:
        model = openvino.Core().read_model(str(path))
    except Exception as error:  # OpenVINO raises RuntimeError subclasses for unreadable or incomplete models
        raise UserError(
            f"'{path}' is not a readable OpenVINO model with its .bin beside it ({type(error).__name__}): "
            "export it again with imageclf export"
        ) from None
    text = model.get_rt_info([METADATA_KEY]).astype(str) if model.has_rt_info([METADATA_KEY]) else None
    output = model.outputs[0].get_partial_shape()[-1]
    outputs = output.get_length() if output.is_static else None
    return predictor_from_metadata(path, text, openvino_function(model, cpu_threads()), outputs)


def compiled_model_file(path: Path, rebuild: bool = False) -> Path:
    """The ONNX file `model.pt` runs as (with the backbone graph it carries, fp32 or int8, when it has one), cached
    under the model file's content hash and compiled when missing. The train stage calls it, so evaluate and
    predict find it ready."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    compiled = cache_dir() / "models" / f"{digest}.onnx"
    if rebuild or not compiled.is_file():
        from imageclf.apps.export import onnx_export
        from imageclf.models.classifier import load_model

        saved = load_model(path)
        write_atomic(compiled, onnx_export(saved, softmax=True, precision=saved.backbone_precision, calibration=[]))
    return compiled


def pytorch_predictor(path: Path) -> Predictor:
    """A model file the train stage wrote: on ONNX Runtime when it is installed (`compiled_model_file`); else on
    PyTorch (and on `train.device`'s automatic choice)."""
    if importlib.util.find_spec("onnxruntime") is None:
        from imageclf.apps.export import torch_predictor
        from imageclf.models.classifier import load_model

        return torch_predictor(load_model(path))
    try:
        return onnx_predictor(compiled_model_file(path))
    except UserError:  # a damaged cache entry is rebuilt, never trusted
        return onnx_predictor(compiled_model_file(path, rebuild=True))


PREDICTORS: dict[str, Callable[[Path], Predictor]] = {".onnx": onnx_predictor, ".xml": openvino_predictor}


def load_predictor(path: Path) -> Predictor:
    """The predictor of a model file: `.onnx` and `.xml` exports by suffix, anything else as a `model.pt`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file '{path}' not found: train one with dvc repro, or pass --model PATH")
    return PREDICTORS.get(path.suffix.lower(), pytorch_predictor)(path)


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
    """One file's class probabilities, or why it could not be read (then `probabilities` is None)."""

    path: Path
    probabilities: np.ndarray | None
    error: str = ""


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
    """Class probabilities for each file, in order, `batch_size` files per forward pass.

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
            probabilities = {}
            if readable:
                stacked = np.concatenate([views for _, views in readable])
                n_views = len(readable[0][1])
                averaged = predictor.probabilities(stacked).reshape(len(readable), n_views, -1).mean(axis=1)
                probabilities = {index: row for (index, _), row in zip(readable, averaged, strict=True)}
            for index, (_, error) in enumerate(loaded):
                yield Prediction(sources[start + index], probabilities.get(index), error)


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
    """A prediction with its most probable class, confidence, whether it is none of the classes (`unknown`) and
    (when the file name or folder tells it) its true class."""

    path: Path
    label: str
    confidence: float
    probabilities: dict[str, float]
    true_label: str | None
    unknown: bool = False

    def as_json(self) -> dict:
        """The object `imageclf predict --json` prints and `imageclf serve` answers: an unknown photo has `label`
        null and `unknown` true, its class probabilities kept."""
        return {
            "path": str(self.path),
            "label": None if self.unknown else self.label,
            "unknown": self.unknown,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
        } | ({"true_label": self.true_label} if self.true_label else {})


def labelled_result(
    prediction: Prediction, target: Path, classes: list[str], unknown_threshold: float | None = None
) -> LabelledResult:
    """A readable file's prediction, its classes named in the model's (training) order."""
    probabilities = prediction.probabilities
    best = int(np.argmax(probabilities))
    confidence = float(probabilities[best])
    return LabelledResult(
        prediction.path,
        classes[best],
        confidence,
        {label: float(p) for label, p in zip(classes, probabilities, strict=True)},
        label_from_path(prediction.path, target, classes),
        is_unknown(confidence, unknown_threshold),
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
    predictor: Predictor, folder: Path, tta: str, batch_size: int, description: str
) -> tuple[list[LabelledResult], list[Prediction]]:
    """The labelled results for the image files under `folder`, and the files that could not be read."""
    found, _ = files_to_predict([folder])
    predictions = list(predict_files(predictor, [path for path, _ in found], tta, batch_size, description=description))
    results = [
        labelled_result(prediction, folder, predictor.classes, predictor.unknown_threshold)
        for prediction in predictions
        if prediction.probabilities is not None
    ]
    return results, [prediction for prediction in predictions if prediction.probabilities is None]
