"""`imageclf summary`: a model's layers, parameters and input, as the study group's `main.py summary` printed."""

import torchinfo

from imageclf.models import create_model, model_spec


def model_summary(name: str, mode: str, num_classes: int, image_size: int | None = None) -> str:
    """The layer table with output shapes and parameter counts; in transfer learning the backbone is frozen."""
    spec = model_spec(name)
    size = image_size or spec.input_size
    model = create_model(name, num_classes, size, pretrained=False)
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
        f"{name} ({mode}, {num_classes} classes)\n{statistics}\n"
        f"Input: 3 × {size} × {size} RGB, scaled to [0, 1], normalised with mean {spec.mean} and std {spec.std}"
        + ("" if image_size else f" ({name}'s own input size; data.image_size sets the pipeline's)")
    )
