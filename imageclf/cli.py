"""The `imageclf` command: use a trained model outside the pipeline, inspect models, run the lessons.

imageclf predict photo.jpg more_photos/ [--model models/model.pt|model.onnx|model.xml] [--top-k 3] [--json]
imageclf export --format onnx|openvino [--model models/model.pt] [--precision fp32|int8] [--softmax] [--output PATH]
imageclf summary [--architecture resnet50] [--mode fine_tuning]
imageclf regression [--epochs 1000] [--lr 0.02] [--plot regression_loss.png]
imageclf fetch animals10 --source Animals-10.zip
imageclf serve [--model models/model.pt] [--host 127.0.0.1] [--port 8000]
imageclf compare [EXP ...] [--all] [--json] [--report FILE.md]
imageclf repeat -n 3 -S train.lr=0.003
imageclf lr-find [--steps 100] [--plot lr_find.png]

Each subcommand imports what it needs when it runs: `imageclf regression`, `imageclf fetch` or `imageclf predict`
with an exported model does not wait for torch, timm and torchvision to load.
"""

import argparse
from pathlib import Path

from imageclf.core.errors import UserError, exit_without_final_collection, exits_cleanly
from imageclf.data.views import DEFAULT_TTA, TTA
from imageclf.inference.predictor import DECODE_THREADS

EXPORT_FORMATS = ("onnx", "openvino")  # the keys of export.EXPORT_FORMATS, which needs torch to import
EXPORT_PRECISIONS = ("fp32", "int8")


def positive_int(text: str) -> int:
    """An argparse type: an integer of 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (0: any free port, printed at start)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, got {value}")
    return value


def predict(args: argparse.Namespace) -> int:
    """Print each image's class, confidence and top-k (or JSON); with labels, the accuracy and the misses."""
    from imageclf.apps.predict import predict_command

    return predict_command(
        args.paths, args.model, args.top_k, args.json, args.tta, args.batch_size, args.decode_threads
    )


def export(args: argparse.Namespace) -> int:
    """Write the classifier as ONNX or OpenVINO IR, with its class names and preprocessing inside."""
    from imageclf.apps.export import export_command

    return export_command(
        args.model, args.format, args.precision, args.softmax, args.output, args.calibration, args.seed
    )


def summary(args: argparse.Namespace) -> int:
    """Print the layer table of `--architecture` in `--mode` (by default, those of params.yaml)."""
    from imageclf.core.params import PARAMS_FILE, TRAIN_MODES, load_params
    from imageclf.study.summary import model_summary

    if args.mode is not None and args.mode not in TRAIN_MODES:
        raise UserError(f"--mode '{args.mode}' is unknown; choices: {', '.join(TRAIN_MODES)}")

    params = load_params() if PARAMS_FILE.is_file() and not (args.architecture and args.mode) else None
    architecture = args.architecture or (params.train.model if params else "original")
    mode = args.mode or (params.train.mode if params else "fromzero")
    num_classes = len(params.data.classes) if params else 3
    print(model_summary(architecture, mode, num_classes, args.image_size))
    return 0


def regression(args: argparse.Namespace) -> int:
    """Learn y = 2x + 1 from the study notes' five points; print the line and save the loss curve."""
    from imageclf.study.regression import X, Y, fit_line, save_loss_curve

    weight, bias, losses = fit_line(args.epochs, args.lr)
    save_loss_curve(losses, args.plot)
    print(f"data: X = {X}, Y = {Y}")
    print(f"learned: y = {weight:.4f}·x + {bias:.4f} (the truth: y = 2x + 1), final loss {losses[-1]:.2e}")
    print(f"loss curve: {args.plot}")
    return 0


def fetch(args: argparse.Namespace) -> int:
    """Import the classes of params.yaml from the Animals-10 download into `--dest`."""
    from imageclf.data.fetch import fetch_command

    return fetch_command(args.source, args.kaggle, args.dest)


def serve(args: argparse.Namespace) -> int:
    """Serve a page to try the model on photos, and its JSON API, until Ctrl+C."""
    from imageclf.apps.serve import serve_command

    return serve_command(args.model, args.host, args.port)


def compare(args: argparse.Namespace) -> int:
    """Print each configuration's accuracy with its spread and 95 % interval, and paired tests between them."""
    from imageclf.study.compare import compare_command

    return compare_command(args.experiments, args.all, args.json, args.report)


def repeat(args: argparse.Namespace) -> int:
    """Queue one configuration over several split seeds as DVC experiments."""
    from imageclf.study.compare import repeat_command

    return repeat_command(args.runs, args.set_param)


def lr_find(args: argparse.Namespace) -> int:
    """Run the learning-rate range test for the train params of params.yaml; plot it and suggest train.lr."""
    from imageclf.study.lr_find import lr_find_command

    return lr_find_command(args.train_dir, args.val_dir, args.steps, args.plot)


def add_model_file_argument(parser: argparse.ArgumentParser) -> None:
    """`--model FILE`: a model file (models/model.pt, or an export), as opposed to an architecture name."""
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("models/model.pt"),
        metavar="FILE",
        help="the train stage's models/model.pt (default) or a file imageclf export wrote (.onnx, .xml)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imageclf", description="Use a model trained by the DVC pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict_parser = commands.add_parser(
        "predict",
        help="classify image files or folders",
        description="Classify images; in class folders or named <class>_*.jpg, also print the accuracy and misses.",
    )
    predict_parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="an image file or a folder")
    add_model_file_argument(predict_parser)
    predict_parser.add_argument("--top-k", type=positive_int, default=3, help="classes to list per image (3)")
    predict_parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    predict_parser.add_argument(
        "--tta",
        choices=TTA,
        default=DEFAULT_TTA,
        help=f"views as in evaluate.tta: flip averages the photo and its mirror image (default: {DEFAULT_TTA})",
    )
    predict_parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (32)")
    predict_parser.add_argument(
        "--decode-threads",
        type=int,
        default=DECODE_THREADS,
        metavar="N",
        help=f"threads decoding the next batch while the model runs; 0: none (default: {DECODE_THREADS})",
    )
    predict_parser.set_defaults(run=predict)

    export_parser = commands.add_parser(
        "export",
        help="write the model as ONNX or OpenVINO IR for other programs",
        description="Write the whole classifier as ONNX or OpenVINO IR; the class names, input size, mean and std "
        "are inside the file as JSON under the key 'imageclf' (ONNX metadata_props, OpenVINO rt_info).",
    )
    export_parser.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    add_model_file_argument(export_parser)
    export_parser.add_argument(
        "--precision",
        choices=EXPORT_PRECISIONS,
        help="default: the backbone's precision in training (train.backbone_precision), whose graph the model file "
        "carries, so the export predicts as evaluate did; fp32 for a model without one",
    )
    export_parser.add_argument("--softmax", action="store_true", help="output probabilities instead of logits")
    export_parser.add_argument(
        "--output", type=Path, metavar="PATH", help="default: beside the model, model.onnx, model.xml, model-int8.*"
    )
    export_parser.add_argument(
        "--calibration",
        type=Path,
        default=Path("data/split/train"),
        metavar="DIR",
        help="int8: the split's train folder whose images calibrate (default: data/split/train)",
    )
    export_parser.add_argument(
        "--seed", type=int, help="int8: picks the calibration images (default: train.seed of params.yaml)"
    )
    export_parser.set_defaults(run=export)

    summary_parser = commands.add_parser(
        "summary",
        help="print an architecture's layers, parameters and input size",
        description="Print the layer table of an architecture (a train.model name), built with random weights.",
    )
    summary_parser.add_argument(
        "--architecture",
        "--model",
        metavar="NAME",
        help="a train.model name such as resnet50 (default: train.model of params.yaml); --model is an alias, "
        "as in the study notes' main.py summary -m NAME",
    )
    summary_parser.add_argument("--mode", help="a train.mode name (default: train.mode of params.yaml)")
    summary_parser.add_argument("--image-size", type=int, help="input side in pixels (default: the model's own)")
    summary_parser.set_defaults(run=summary)

    regression_parser = commands.add_parser("regression", help="the regression lesson: learn y = 2x + 1")
    regression_parser.add_argument("--epochs", type=int, default=1000)
    regression_parser.add_argument("--lr", type=float, default=0.02, help="learning rate of plain gradient descent")
    regression_parser.add_argument("--plot", type=Path, default=Path("regression_loss.png"), help="the loss curve PNG")
    regression_parser.set_defaults(run=regression)

    fetch_parser = commands.add_parser(
        "fetch", help="import a public data set into data/raw", description="Import Kaggle's Animals-10 archive."
    )
    fetch_parser.add_argument("dataset", choices=["animals10"], help="the data set")
    where = fetch_parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--source", type=Path, metavar="PATH", help="the downloaded zip, or the folder it unpacks to")
    where.add_argument("--kaggle", action="store_true", help="download Animals-10 with the Kaggle API")
    fetch_parser.add_argument(
        "--dest", type=Path, default=Path("data/raw"), help="where <class>/ folders go (default: data/raw)"
    )
    fetch_parser.set_defaults(run=fetch)

    serve_parser = commands.add_parser(
        "serve",
        help="a web page and JSON API to try the model on your own photos",
        description="Serve a page (drop or take photos, see each one's classes) and POST /predict, GET /health.",
    )
    add_model_file_argument(serve_parser)
    serve_parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    serve_parser.add_argument("--port", type=port_number, default=8000, help="0 picks a free one (default: 8000)")
    serve_parser.set_defaults(run=serve)

    compare_parser = commands.add_parser(
        "compare",
        help="compare DVC experiments: mean, spread, 95 %% intervals, paired tests",
        description="Group finished DVC experiments by their params without the seeds; per configuration the "
        "accuracy and macro-F1 mean, sd, min-max and 95 % interval; McNemar's exact test between configurations "
        "run with the same seeds.",
    )
    compare_parser.add_argument(
        "experiments", nargs="*", metavar="EXP", help="experiment names or revisions (default: all that are shown)"
    )
    compare_parser.add_argument(
        "--all", action="store_true", help="the experiments of every commit, not only of HEAD (dvc exp show -A)"
    )
    compare_parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    compare_parser.add_argument(
        "--report", type=Path, metavar="FILE.md", help="also write a Markdown report, with its plot beside it (.png)"
    )
    compare_parser.set_defaults(run=compare)

    repeat_parser = commands.add_parser(
        "repeat",
        help="queue one configuration over several split seeds (dvc exp run --queue)",
        description="Queue `dvc exp run` of one configuration once per split seed (42, 1, 2, ...), so that "
        "`imageclf compare` can tell its spread; start them with `dvc queue start`.",
    )
    repeat_parser.add_argument("-n", "--runs", type=positive_int, default=3, help="how many split seeds (3)")
    repeat_parser.add_argument(
        "-S",
        "--set-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params.yaml value for every run, as in dvc exp run -S (repeatable)",
    )
    repeat_parser.set_defaults(run=repeat)

    lr_find_parser = commands.add_parser(
        "lr-find",
        help="suggest train.lr with a learning-rate range test",
        description="fastai's range test for the train.* params of params.yaml: the learning rate grows from 1e-7 "
        "to 10 until the smoothed loss passes 4x its best; suggests where it fell fastest. Writes only the plot.",
    )
    lr_find_parser.add_argument("--steps", type=positive_int, default=100, help="batches at most (100)")
    lr_find_parser.add_argument(
        "--plot", type=Path, default=Path("lr_find.png"), help="the loss curve PNG (default: lr_find.png)"
    )
    lr_find_parser.add_argument(
        "--train-dir", type=Path, default=Path("data/augmented"), help="training manifest folder (data/augmented)"
    )
    lr_find_parser.add_argument(
        "--val-dir", type=Path, default=Path("data/split/val"), help="validation manifest folder (data/split/val)"
    )
    lr_find_parser.set_defaults(run=lr_find)
    return parser


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    """The `imageclf` program (`argv` None: the command line), or one command called from Python with `argv`."""
    if argv is None:
        exit_without_final_collection()
    args = build_parser().parse_args(argv)
    raise SystemExit(args.run(args))
