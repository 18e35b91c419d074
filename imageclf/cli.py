"""The `imageclf` command: use a trained model outside the pipeline.

imageclf predict photo.jpg more_photos/ [--model models/model.pt] [--top-k 3] [--json]
"""

import argparse
from pathlib import Path

from imageclf.errors import exits_cleanly
from imageclf.params import DEFAULT_TTA, TTA_MODES


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def predict(args: argparse.Namespace) -> int:
    from imageclf.predict import predict_command

    return predict_command(args.paths, args.model, args.top_k, args.json, args.tta, args.batch_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imageclf", description="Use a model trained by the DVC pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict_parser = commands.add_parser(
        "predict",
        help="classify image files or folders",
        description="Classify images; in class folders or named <class>_*.jpg, also print the accuracy and misses.",
    )
    predict_parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="an image file or a folder")
    predict_parser.add_argument("--model", type=Path, default=Path("models/model.pt"), help="the model file")
    predict_parser.add_argument("--top-k", type=positive_int, default=3, help="classes to list per image (3)")
    predict_parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    predict_parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default=DEFAULT_TTA,
        help=f"test-time views as in evaluate.tta: flip averages the photo and its mirror image ({DEFAULT_TTA})",
    )
    predict_parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (32)")
    predict_parser.set_defaults(run=predict)
    return parser


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    raise SystemExit(args.run(args))
