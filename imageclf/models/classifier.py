"""A classifier (an architecture's backbone with a new head, `create_model`) and the model file that keeps it with
its class names and preprocessing (`save_model`, `load_model`)."""

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imageclf.core.errors import UserError
from imageclf.core.files import write_atomic
from imageclf.data.images import Preprocessing
from imageclf.models.architectures import model_spec, preprocessing_for

MODEL_FILE_KEYS = {"state_dict", "model", "classes", "image_size", "mean", "std"}
StateDict = dict[str, torch.Tensor]
# The state dict prefix of the linear layer in a Classifier's head (dropout, linear).
HEAD_LINEAR = "head.1"


class Classifier(nn.Module):
    """A backbone that maps images to feature vectors, and a head (dropout, linear) that maps those to logits."""

    def __init__(self, backbone: nn.Module, num_classes: int, image_size: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            num_features = backbone.eval()(torch.zeros(1, 3, image_size, image_size)).shape[1]
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def read_state_dict(path: Path) -> StateDict:
    """A state dict saved with `torch.save`, or the backbone of a model file this project wrote."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"train.weights '{path}' not found: give the path of a saved state dict") from None
    except Exception as error:
        raise UserError(f"train.weights '{path}' is not a state dict torch can load safely ({error})") from None
    if isinstance(loaded, dict) and set(loaded) >= MODEL_FILE_KEYS:
        loaded = {
            name.removeprefix("backbone."): tensor
            for name, tensor in loaded["state_dict"].items()
            if name.startswith("backbone.")
        }
    if not isinstance(loaded, dict) or not all(isinstance(tensor, torch.Tensor) for tensor in loaded.values()):
        raise UserError(f"train.weights '{path}' is not a state dict (a mapping of names to tensors)")
    return loaded


def create_model(
    name: str,
    num_classes: int,
    image_size: int,
    pretrained: bool,
    weights: Path | None = None,
    dropout: float = 0.0,
) -> Classifier:
    """Build model `name` with a new `num_classes` head.

    With `pretrained`, the backbone gets the state dict at `weights`, or else the model's ImageNet weights.
    """
    spec = model_spec(name)
    preprocessing_for(name, image_size)
    backbone = spec.build_backbone(image_size)
    if pretrained:
        if weights is not None:
            state_dict, source = read_state_dict(weights), f"train.weights '{weights}'"
        elif spec.imagenet_weights is not None:
            state_dict, source = spec.imagenet_weights(), f"the ImageNet weights of '{name}'"
        else:
            raise UserError(
                f"train.model '{name}' has no pretrained weights: use train.mode: fromzero, "
                "or set train.weights to a state dict you saved"
            )
        try:
            spec.load_weights(backbone, state_dict)
        except RuntimeError as error:
            problem = str(error).strip().splitlines()[0]
            raise UserError(f"{source} do not fit train.model '{name}': {problem}") from None
    return Classifier(backbone, num_classes, image_size, dropout)


@dataclass(frozen=True)
class SavedModel:
    """A trained model with what it takes to use it: its class names and its preprocessing.

    `unknown_threshold`: a photo whose top probability is under it is none of the classes (None: never), chosen on
    the val split by the train stage; files written before it existed load without one.
    """

    model: Classifier
    name: str
    classes: list[str]
    preprocessing: Preprocessing
    unknown_threshold: float | None = None
    # Transfer learning on ONNX Runtime: the backbone graph that computed the training features, and its
    # precision (fp32 or int8), so that prediction runs the same backbone the head was trained on.
    backbone_onnx: bytes | None = None
    backbone_precision: str = "fp32"


def save_model(path: Path, saved: SavedModel) -> None:
    """Save a state dict with plain metadata, so the file loads with `torch.load(..., weights_only=True)`.

    Every tensor is written in the standard layout: `torch.save` records strides, and `.contiguous()` keeps a
    channels-last 1x1 or depthwise kernel's strides, so the same weights would otherwise give different files.
    """
    buffer = io.BytesIO()
    state_dict = {
        name: tensor.detach().clone(memory_format=torch.contiguous_format)
        for name, tensor in saved.model.state_dict().items()
    }
    torch.save(
        {
            "state_dict": state_dict,
            "model": saved.name,
            "classes": list(saved.classes),
            "image_size": saved.preprocessing.image_size,
            "mean": list(saved.preprocessing.mean),
            "std": list(saved.preprocessing.std),
            **backbone_entries(saved),
            "unknown_threshold": saved.unknown_threshold,
        },
        buffer,
    )
    write_atomic(Path(path), buffer.getvalue())


def backbone_entries(saved: SavedModel) -> dict:
    """The backbone graph as a uint8 tensor (which `weights_only` loading accepts) and its precision."""
    if saved.backbone_onnx is None:
        return {}
    graph = torch.frombuffer(bytearray(saved.backbone_onnx), dtype=torch.uint8)
    return {"backbone_onnx": graph, "backbone_precision": saved.backbone_precision}


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
    model = create_model(saved["model"], len(saved["classes"]), saved["image_size"], pretrained=False)
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError:
        raise UserError(
            f"'{path}' does not match the '{saved['model']}' architecture with {len(saved['classes'])} classes"
        ) from None
    graph = saved.get("backbone_onnx")
    threshold = saved.get("unknown_threshold")
    return SavedModel(
        model.eval(),
        saved["model"],
        list(saved["classes"]),
        preprocessing,
        unknown_threshold=None if threshold is None else float(threshold),
        backbone_onnx=None if graph is None else graph.numpy().tobytes(),
        backbone_precision=saved.get("backbone_precision", "fp32"),
    )


@dataclass(frozen=True)
class GraphAndHead:
    """A transfer-learning model file's backbone graph, at its precision, and its head's linear layer (dropout
    does nothing at prediction): features in, class probabilities out, as its ONNX export computes them."""

    graph: bytes
    precision: str
    weight: torch.Tensor
    bias: torch.Tensor

    def probabilities(self, features: torch.Tensor) -> np.ndarray:
        return torch.softmax(nn.functional.linear(features, self.weight, self.bias), dim=1).numpy()


def graph_and_head(path: Path) -> GraphAndHead | None:
    """The backbone graph a model file carries with its head, None when it carries none; read without building
    the architecture, whose timm import alone takes 3 s."""
    saved = read_model_file(path)
    if saved.get("backbone_onnx") is None:
        return None
    state_dict = saved["state_dict"]
    return GraphAndHead(
        saved["backbone_onnx"].numpy().tobytes(),
        saved["backbone_precision"],
        state_dict[f"{HEAD_LINEAR}.weight"],
        state_dict[f"{HEAD_LINEAR}.bias"],
    )
