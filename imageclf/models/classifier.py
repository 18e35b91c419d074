"""A classifier: an architecture's backbone with a new head (`create_model`), pretrained or not."""

from pathlib import Path

import torch
from torch import nn

from imageclf.core.errors import UserError
from imageclf.models.architectures import model_spec, preprocessing_for
from imageclf.models.blocks import block_count, split_chain

StateDict = dict[str, torch.Tensor]
# The state dict prefix of the linear layer in a Classifier's head (dropout, linear).
HEAD_LINEAR = "head.1"
# The keys of a model file (`model_file.save_model`); a state dict read from one is its backbone's.
MODEL_FILE_KEYS = {"state_dict", "model", "classes", "image_size", "mean", "std"}


class Classifier(nn.Module):
    """A backbone that maps images to feature vectors, and a head (dropout, linear) that maps those to logits."""

    def __init__(self, backbone: nn.Module, num_classes: int, image_size: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            num_features = backbone.eval()(torch.zeros(1, 3, image_size, image_size)).shape[1]
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))

    @classmethod
    def of(cls, backbone: nn.Module, head: nn.Module) -> "Classifier":
        """A classifier of an existing head: the last blocks of a backbone that train with their head
        (`split_backbone`) are one."""
        classifier = cls.__new__(cls)
        nn.Module.__init__(classifier)
        classifier.backbone, classifier.head = backbone, head
        return classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


class WithFeatures(nn.Module):
    """A classifier whose output is its logits (or probabilities, with `softmax`) and its backbone's features: what
    an ONNX export of it outputs, so that the none-of-these nodes (`unknown.onnx_unknown`) can read the features."""

    def __init__(self, classifier: Classifier, softmax: bool):
        super().__init__()
        self.classifier, self.softmax = classifier, softmax

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.classifier.backbone(images)
        logits = self.classifier.head(features)
        return (torch.softmax(logits, dim=1) if self.softmax else logits), features


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


def split_backbone(name: str, backbone: nn.Module, trainable_blocks: int) -> tuple[nn.Module, nn.Module]:
    """Model `name`'s backbone as (its frozen first blocks, its last `trainable_blocks` blocks and tail), the
    backbone's own modules (`blocks.py`)."""
    chain = model_spec(name).chain
    if chain is None:
        raise UserError(f"train.trainable_blocks: train.model '{name}' has no pretrained blocks: set it to 0")
    modules = chain(backbone)
    if not 0 <= trainable_blocks <= block_count(modules):
        raise UserError(
            f"train.trainable_blocks {trainable_blocks}: train.model '{name}' has {block_count(modules)} blocks; "
            f"use 0 (the head only) to {block_count(modules)}"
        )
    return split_chain(modules, trainable_blocks)
