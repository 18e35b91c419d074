"""The `imageclf` command: use a trained model outside the pipeline.

imageclf predict photo.jpg more_photos/ [--model models/model.pt]
"""

import argparse
import sys
from pathlib import Path

import torch

from imageclf.errors import UserError, exits_cleanly
from imageclf.fetch import add_fetch_command
from imageclf.images import is_image_name, open_rgb
from imageclf.models import load_model


def image_paths(targets: list[Path]) -> list[Path]:
    """Files as given, and the image files inside folders, recursively."""
    paths = []
    for target in targets:
        if target.is_dir():
            paths += sorted(path for path in target.rglob("*") if path.is_file() and is_image_name(path))
        elif target.exists():
            paths.append(target)
        else:
            raise UserError(f"'{target}' does not exist")
    if not paths:
        raise UserError(f"no images found in {', '.join(map(str, targets))}")
    return paths


@torch.inference_mode()
def predict(args: argparse.Namespace) -> int:
    """Print path, predicted class and confidence for each image; a file that cannot be read is reported."""
    saved = load_model(args.model)
    paths = image_paths(args.paths)
    width = max(len(str(path)) for path in paths)
    failures = 0
    for path in paths:
        try:
            image = open_rgb(path, min_side=saved.preprocessing.image_size)
        except (OSError, SyntaxError, ValueError) as error:
            print(f"error: cannot read '{path}': {error}", file=sys.stderr)
            failures += 1
            continue
        probabilities = saved.model(saved.preprocessing(image).unsqueeze(0)).softmax(dim=1)[0]
        confidence, index = probabilities.max(dim=0)
        print(f"{path!s:<{width}}  {saved.classes[index]:<10}  {confidence.item():.3f}")
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imageclf", description="Use a model trained by the DVC pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict_parser = commands.add_parser("predict", help="classify image files or folders")
    predict_parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="an image file or a folder")
    predict_parser.add_argument("--model", type=Path, default=Path("models/model.pt"), help="the model file")
    predict_parser.set_defaults(run=predict)
    add_fetch_command(commands)
    return parser


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    raise SystemExit(args.run(args))
