"""The `imageclf` command: use a trained model outside the pipeline, inspect models, run the lessons.

imageclf predict photo.jpg more_photos/ [--model models/model.pt]
imageclf summary [--model resnet50] [--mode fine_tuning]
imageclf regression [--epochs 1000] [--lr 0.02] [--plot regression_loss.png]
"""

import argparse
import sys
from pathlib import Path

import torch

from imageclf.errors import UserError, exits_cleanly
from imageclf.fetch import add_fetch_command
from imageclf.images import is_image_name, open_rgb
from imageclf.models import MODELS, load_model
from imageclf.params import PARAMS_FILE, TRAIN_MODES, load_params
from imageclf.regression import X, Y, fit_line, save_loss_curve
from imageclf.summary import model_summary


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


def summary(args: argparse.Namespace) -> int:
    """Print the layer table of `--model` in `--mode` (by default, those of params.yaml)."""
    params = load_params() if PARAMS_FILE.is_file() and not (args.model and args.mode) else None
    name = args.model or (params.train.model if params else "original")
    mode = args.mode or (params.train.mode if params else "fromzero")
    num_classes = len(params.data.classes) if params else 3
    print(model_summary(name, mode, num_classes, args.image_size))
    return 0


def regression(args: argparse.Namespace) -> int:
    """Learn y = 2x + 1 from the study notes' five points; print the line and save the loss curve."""
    weight, bias, losses = fit_line(args.epochs, args.lr)
    save_loss_curve(losses, args.plot)
    print(f"data: X = {X}, Y = {Y}")
    print(f"learned: y = {weight:.4f}·x + {bias:.4f} (the truth: y = 2x + 1), final loss {losses[-1]:.2e}")
    print(f"loss curve: {args.plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imageclf", description="Use a model trained by the DVC pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict_parser = commands.add_parser("predict", help="classify image files or folders")
    predict_parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="an image file or a folder")
    predict_parser.add_argument("--model", type=Path, default=Path("models/model.pt"), help="the model file")
    predict_parser.set_defaults(run=predict)

    summary_parser = commands.add_parser("summary", help="print a model's layers, parameters and input size")
    summary_parser.add_argument("--model", choices=list(MODELS), help="default: train.model of params.yaml")
    summary_parser.add_argument("--mode", choices=TRAIN_MODES, help="default: train.mode of params.yaml")
    summary_parser.add_argument("--image-size", type=int, help="input side in pixels (default: the model's own)")
    summary_parser.set_defaults(run=summary)

    regression_parser = commands.add_parser("regression", help="the regression lesson: learn y = 2x + 1")
    regression_parser.add_argument("--epochs", type=int, default=1000)
    regression_parser.add_argument("--lr", type=float, default=0.02, help="learning rate of plain gradient descent")
    regression_parser.add_argument("--plot", type=Path, default=Path("regression_loss.png"), help="the loss curve PNG")
    regression_parser.set_defaults(run=regression)

    add_fetch_command(commands)
    return parser


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    raise SystemExit(args.run(args))
