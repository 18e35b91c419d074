"""`imageclf summary`: an architecture's layers, parameters and input, as the study notes' `main.py summary` printed."""

import torchinfo

from imageclf.models.architectures import model_spec
from imageclf.models.classifier import create_model


def model_summary(architecture: str, mode: str, num_classes: int, image_size: int | None = None) -> str:
    """The layer table of `architecture` (a train.model name) with output shapes and parameter counts, built with
    random weights; in transfer learning the backbone is frozen."""
    spec = model_spec(architecture)
    size = image_size or spec.input_size
    model = create_model(architecture, num_classes, size, pretrained=False)
    if mode == "transfer_learning":
        model.backbone.requires_grad_(False)
    statistics = torchinfo.summary(
        model,
        input_size=(1, 3, size, size),
        col_names=("output_size", "num_params", "trainable"),
        depth=3,
        verbose=0,
        device="cpu",
    )
    return (
        f"{architecture} ({mode}, {num_classes} classes)\n{statistics}\n"
        f"Input: 3 × {size} × {size} RGB, scaled to [0, 1], normalised with mean {spec.mean} and std {spec.std}"
        + ("" if image_size else f" ({architecture}'s own input size; data.image_size sets the pipeline's)")
    )
