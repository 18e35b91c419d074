"""`imageclf summary`: print an architecture's layers, parameters and input size, as the study notes' `main.py
summary` printed: the layer table of a train.model name, built with random weights."""

import argparse

import torchinfo

from imageclf.core.config import PARAMS_FILE, load
from imageclf.data.params import DataParams
from imageclf.models.architectures import model_spec
from imageclf.models.classifier import create_model
from imageclf.training.modes import MODES
from imageclf.training.params import TrainParams


def model_summary(architecture: str, mode: str, num_classes: int, image_size: int | None = None) -> str:
    """The layer table of `architecture` (a train.model name) with output shapes and parameter counts, built with
    random weights; where `mode` does not train the backbone, it shows as frozen."""
    spec = model_spec(architecture)
    size = image_size or spec.input_size
    model = create_model(architecture, num_classes, size, pretrained=False)
    if not MODES[mode].trains_backbone:
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


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--architecture",
        "--model",
        metavar="NAME",
        help="a train.model name such as resnet50 (default: train.model of params.yaml); --model is an alias, "
        "as in the study notes' main.py summary -m NAME",
    )
    parser.add_argument("--mode", choices=MODES, help="a train.mode name (default: train.mode of params.yaml)")
    parser.add_argument("--image-size", type=int, help="input side in pixels (default: the model's own)")


def run(args: argparse.Namespace) -> int:
    """The layer table of `--architecture` in `--mode`; by default those of params.yaml, else `original` from zero."""
    from_file = PARAMS_FILE.is_file() and not (args.architecture and args.mode)
    train = load(TrainParams) if from_file else None
    architecture = args.architecture or (train.model if train else "original")
    mode = args.mode or (train.mode if train else "fromzero")
    num_classes = len(load(DataParams).classes) if from_file else 3
    print(model_summary(architecture, mode, num_classes, args.image_size))
    return 0
