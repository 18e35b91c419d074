"""The one way to load a model file into a `Predictor`: a `model.pt` the train stage wrote, or an `imageclf export`
file (`.onnx`, OpenVINO `.xml`). evaluate, `imageclf predict`, `imageclf serve` and `imageclf export` all use it.

A `Predictor` is a model reduced to what prediction needs: class names, preprocessing, the scores that flag a photo
as none of the classes, and a function from a float32 NCHW batch to the graph's named outputs (`onnx_graph`). Only
PIL and NumPy are imported here: an exported model never loads torch. A `model.pt` is compiled to ONNX once (which
needs torch) and the ONNX file is cached by the model file's content hash, so later calls skip torch too.
"""

import hashlib
import importlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imageclf.backbone.runtimes import cpu_threads, onnxruntime_session, openvino_compiled
from imageclf.core.cache import cache_dir
from imageclf.core.errors import UserError
from imageclf.core.files import write_atomic
from imageclf.data.images import Preprocessing
from imageclf.inference.onnx_graph import FEATURES, METADATA_KEY

# A batch → the graph's outputs by name: the class output, `features`, and the detector's `unknown_*` outputs.
NamedOutputs = Callable[[np.ndarray], dict[str, np.ndarray]]
# What `predict` says once of a model without a detector.
PREDATES = (
    "this model predates the none-of-these scores (feature distance, ImageNet classes): no photo is flagged "
    "unknown; retrain it (dvc repro) to get them"
)


@dataclass(frozen=True)
class Scored:
    """A batch's class probabilities and, per photo and score (`Predictor.unknown_scores`, in order), the score and
    whether it is under its threshold."""

    probabilities: np.ndarray
    scores: np.ndarray
    flags: np.ndarray


@dataclass(frozen=True)
class Predictor:
    """A model ready to predict: `forward` maps a preprocessed batch to its named outputs, `output` naming the
    class output: probabilities when `outputs_probabilities`, else logits (softmax is applied here).
    `unknown_thresholds`: each score that flags a photo as none of the classes, in the order of the flags, with its
    threshold (empty for a model that predates them: no photo is flagged); `unknown_note`: what the model's
    detector leaves out, if anything."""

    architecture: str
    classes: list[str]
    preprocessing: Preprocessing
    forward: NamedOutputs
    output: str
    outputs_probabilities: bool
    unknown_thresholds: dict[str, float] = field(default_factory=dict)
    unknown_note: str = ""

    @property
    def unknown_scores(self) -> tuple[str, ...]:
        return tuple(self.unknown_thresholds)

    def predict(self, batch: np.ndarray) -> Scored:
        outputs = self.forward(batch)
        probabilities = np.asarray(outputs[self.output], dtype=np.float32)
        if not self.outputs_probabilities:
            exponentials = np.exp(probabilities - probabilities.max(axis=1, keepdims=True))
            probabilities = exponentials / exponentials.sum(axis=1, keepdims=True)
        if not self.unknown_scores:
            empty = np.zeros((len(probabilities), 0))
            return Scored(probabilities, empty.astype(np.float32), empty.astype(bool))
        scores = np.stack([outputs[f"unknown_score_{name}"] for name in self.unknown_scores], axis=1)
        return Scored(probabilities, scores.astype(np.float32), np.asarray(outputs["unknown_flags"], dtype=bool))


def load_predictor(path: Path) -> Predictor:
    """The predictor of a model file: `.onnx` and `.xml` exports by suffix, anything else as a `model.pt`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file '{path}' not found: train one with dvc repro, or pass --model PATH")
    return PREDICTORS.get(path.suffix.lower(), model_file_predictor)(path)


def model_file_predictor(path: Path) -> Predictor:
    """A model file the train stage wrote: on ONNX Runtime when it is installed (`compiled_model_file`); else on
    PyTorch (and on `train.device`'s automatic choice)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return torch_predictor(path)
    try:
        return onnx_predictor(compiled_model_file(path))
    except UserError:  # a damaged cache entry is rebuilt, never trusted
        return onnx_predictor(compiled_model_file(path, rebuild=True))


def compiled_model_file(path: Path, rebuild: bool = False) -> Path:
    """The ONNX file `model.pt` runs as (`onnx_graph.classifier_onnx` at the precision of the backbone graph it
    carries), cached under the model file's content hash and compiled when missing. The train stage calls it, so
    evaluate and predict find it ready."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    compiled = cache_dir() / "models" / f"{digest}.onnx"
    if rebuild or not compiled.is_file():
        from imageclf.inference.onnx_graph import classifier_onnx
        from imageclf.models.model_file import load_model

        saved = load_model(path)
        write_atomic(compiled, classifier_onnx(saved, softmax=True, precision=saved.backbone_precision, calibration=[]))
    return compiled


def torch_predictor(path: Path) -> Predictor:
    """A model file on PyTorch, for where ONNX Runtime is not installed: on CUDA or MPS when there is one; the
    detector runs in NumPy on the backbone's features, as its ONNX nodes would."""
    import torch

    from imageclf.core.device import select_device
    from imageclf.models.model_file import load_model

    saved = load_model(path)
    device = select_device()
    classifier = saved.classifier.eval().to(device, memory_format=torch.channels_last)

    def forward(batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            images = torch.from_numpy(batch).to(device, memory_format=torch.channels_last)
            features = classifier.backbone(images).float()
            probabilities = classifier.head(features).softmax(dim=1).cpu().numpy()
        features = features.cpu().numpy()
        unknown = {} if saved.unknown is None else saved.unknown.outputs(features)
        return {"probabilities": probabilities, FEATURES: features} | unknown

    detector = saved.unknown
    return Predictor(
        saved.architecture,
        saved.classes,
        saved.preprocessing,
        forward,
        "probabilities",
        True,
        {} if detector is None else {name: detector.thresholds[name] for name in detector.score_names},
        "" if detector is None else detector.note,
    )


def onnx_predictor(path: Path) -> Predictor:
    """An `imageclf export --format onnx` file (or a compiled model file), on ONNX Runtime."""
    require_module("onnxruntime", "onnxruntime", path)
    try:
        session = onnxruntime_session(path, cpu_threads())
    except Exception as error:  # ONNX Runtime raises its own exception types for unreadable graphs
        raise UserError(
            f"'{path}' is not a readable ONNX model ({type(error).__name__}): export it again with imageclf export"
        ) from None
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    name = session.get_inputs()[0].name
    names = [output.name for output in session.get_outputs()]

    def forward(batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(None, {name: batch}), strict=True))

    return predictor_from_metadata(path, text, forward, names[0], session.get_outputs()[0].shape[-1])


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
    shape = model.outputs[0].get_partial_shape()[-1]
    compiled = openvino_compiled(model, cpu_threads())
    request = compiled.create_infer_request()

    def forward(batch: np.ndarray) -> dict[str, np.ndarray]:
        results = request.infer({0: batch})
        return {output.get_any_name(): np.array(results[output]) for output in compiled.outputs}

    outputs = shape.get_length() if shape.is_static else None
    return predictor_from_metadata(path, text, forward, compiled.outputs[0].get_any_name(), outputs)


PREDICTORS: dict[str, Callable[[Path], Predictor]] = {".onnx": onnx_predictor, ".xml": openvino_predictor}


def predictor_from_metadata(
    path: Path, text: str | None, forward: NamedOutputs, output: str, outputs: int | None
) -> Predictor:
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
        unknown = metadata.get("unknown") or {"scores": [], "thresholds": {}, "note": ""}
        thresholds = {str(name): float(unknown["thresholds"][name]) for name in unknown["scores"]}
        note = str(unknown["note"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"'{path}' has damaged {METADATA_KEY} metadata: export it again with imageclf export") from None
    if isinstance(outputs, int) and outputs != len(classes):
        raise UserError(
            f"'{path}' outputs {outputs} classes but its metadata names {len(classes)}: export it again with "
            "imageclf export"
        )
    return Predictor(
        metadata.get("model", path.stem), classes, preprocessing, forward, output, softmax, thresholds, note
    )


def require_module(module: str, package: str, path: Path) -> None:
    """Raise UserError naming the package `path` needs and how to do without it, unless `module` imports."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"'{path}' needs {module}, which is not installed: pip install {package}, or predict with the "
            "model.pt it was exported from (--model models/model.pt)"
        ) from None
