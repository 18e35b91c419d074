"""The model file (`models/model.pt`): a trained classifier with what it takes to use it (its class names, its
preprocessing, its none-of-these detector and, for a frozen backbone on ONNX Runtime, the backbone graph that computed
its training features). Written by `save_model`, read back by `load_model`; `carried_backbone` reads just the graph,
the head and the detector, without building the architecture."""

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imageclf.core.errors import UserError
from imageclf.core.files import write_atomic
from imageclf.data.images import Preprocessing
from imageclf.models.classifier import HEAD_LINEAR, MODEL_FILE_KEYS, Classifier, create_model
from imageclf.models.head import LinearHead
from imageclf.models.unknown import UnknownDetector


@dataclass(frozen=True)
class SavedModel:
    """A trained classifier of architecture `architecture` with its class names and preprocessing.

    `unknown`: what flags a photo as none of the classes, fitted on the training photos' features and calibrated on
    val by the train stage; files written before it existed load without one, and flag no photo.
    `backbone_onnx`: for a frozen backbone on ONNX Runtime, the graph that computed the training features, at
    `backbone_precision` (fp32 or int8), so that prediction runs the same backbone the head was trained on.
    """

    classifier: Classifier
    architecture: str
    classes: list[str]
    preprocessing: Preprocessing
    unknown: UnknownDetector | None = None
    backbone_onnx: bytes | None = None
    backbone_precision: str = "fp32"

    @property
    def head(self) -> LinearHead:
        linear = self.classifier.head[-1]
        return LinearHead(linear.weight.detach().numpy(), linear.bias.detach().numpy())


def save_model(path: Path, saved: SavedModel) -> None:
    """Save a state dict with plain metadata, so the file loads with `torch.load(..., weights_only=True)`.

    Every tensor is written in the standard layout: `torch.save` records strides, and `.contiguous()` keeps a
    channels-last 1x1 or depthwise kernel's strides, so the same weights would otherwise give different files.
    """
    buffer = io.BytesIO()
    state_dict = {
        name: tensor.detach().clone(memory_format=torch.contiguous_format)
        for name, tensor in saved.classifier.state_dict().items()
    }
    graph = {}
    if saved.backbone_onnx is not None:  # as a uint8 tensor, which `weights_only` loading accepts
        graph = {
            "backbone_onnx": torch.frombuffer(bytearray(saved.backbone_onnx), dtype=torch.uint8),
            "backbone_precision": saved.backbone_precision,
        }
    torch.save(
        {
            "state_dict": state_dict,
            "model": saved.architecture,
            "classes": list(saved.classes),
            "image_size": saved.preprocessing.image_size,
            "mean": list(saved.preprocessing.mean),
            "std": list(saved.preprocessing.std),
            **graph,
            **({} if saved.unknown is None else {"unknown": detector_tensors(saved.unknown)}),
        },
        buffer,
    )
    write_atomic(Path(path), buffer.getvalue())


def detector_tensors(detector: UnknownDetector) -> dict:
    """The detector's state with its arrays as tensors, which `weights_only` loading accepts."""
    return {
        name: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
        for name, value in detector.state().items()
    }


def saved_detector(saved: dict) -> UnknownDetector | None:
    """The detector a model file keeps; None in a file written before it existed."""
    return None if saved.get("unknown") is None else UnknownDetector.from_state(saved["unknown"])


def read_model_file(path: Path) -> dict:
    """The contents of a file written by `save_model`, refusing anything else with one line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file '{path}' not found: train one with dvc repro, or pass --model PATH")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"'{path}' is not a model file this project can load ({type(error).__name__})") from None
    if not isinstance(saved, dict) or not set(saved) >= MODEL_FILE_KEYS:
        raise UserError(
            f"'{path}' is not a model file written by this project (expected keys: "
            f"{', '.join(sorted(MODEL_FILE_KEYS))})"
        )
    return saved


def load_model(path: Path) -> SavedModel:
    """Load a file written by `save_model`, in eval mode, refusing anything else with one line."""
    saved = read_model_file(path)
    preprocessing = Preprocessing(saved["image_size"], tuple(saved["mean"]), tuple(saved["std"]))
    classifier = create_model(saved["model"], len(saved["classes"]), saved["image_size"], pretrained=False)
    try:
        classifier.load_state_dict(saved["state_dict"])
    except RuntimeError:
        raise UserError(
            f"'{path}' does not match the '{saved['model']}' architecture with {len(saved['classes'])} classes"
        ) from None
    graph = saved.get("backbone_onnx")
    return SavedModel(
        classifier.eval(),
        saved["model"],
        list(saved["classes"]),
        preprocessing,
        unknown=saved_detector(saved),
        backbone_onnx=None if graph is None else graph.numpy().tobytes(),
        backbone_precision=saved.get("backbone_precision", "fp32"),
    )


@dataclass(frozen=True)
class CarriedBackbone:
    """A model file's backbone graph, at its precision, its head and its detector: features in, probabilities and
    flags out."""

    architecture: str
    graph: bytes
    precision: str
    preprocessing: Preprocessing
    head: LinearHead
    unknown: UnknownDetector | None


def carried_backbone(path: Path) -> CarriedBackbone | None:
    """The backbone graph a model file carries with its head and detector, None when it carries none; read without
    building the architecture (which imports timm)."""
    saved = read_model_file(path)
    if saved.get("backbone_onnx") is None:
        return None
    state_dict = saved["state_dict"]
    return CarriedBackbone(
        saved["model"],
        saved["backbone_onnx"].numpy().tobytes(),
        saved["backbone_precision"],
        Preprocessing(saved["image_size"], tuple(saved["mean"]), tuple(saved["std"])),
        LinearHead(state_dict[f"{HEAD_LINEAR}.weight"].numpy(), state_dict[f"{HEAD_LINEAR}.bias"].numpy()),
        saved_detector(saved),
    )
