"""Command-line arguments that several `imageclf` commands share."""

import argparse
from pathlib import Path

from imageclf.core.paths import MODEL_FILE


def positive_int(text: str) -> int:
    """An argparse type: an integer of 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def add_model_file_argument(parser: argparse.ArgumentParser) -> None:
    """`--model FILE`: a model file (models/model.pt, or an export), as opposed to an architecture name."""
    parser.add_argument(
        "--model",
        type=Path,
        default=MODEL_FILE,
        metavar="FILE",
        help=f"the train stage's {MODEL_FILE} (default) or a file imageclf export wrote (.onnx, .xml)",
    )
