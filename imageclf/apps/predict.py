"""`imageclf predict`: classify image files or folders: each file's class and confidence, or "unknown" and why (a
table or JSON), and the accuracy and misses when the photos are labelled (in class folders or named <class>_*.jpg)."""

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from imageclf.core.arguments import add_model_file_argument, positive_int
from imageclf.data.views import DEFAULT_TTA, TTA
from imageclf.evaluation.metrics import labelled_scores
from imageclf.inference.photos import DECODE_THREADS, LabelledResult, files_to_predict, labelled_result, predict_files
from imageclf.inference.predictor import PREDATES, Predictor, load_predictor
from imageclf.models.unknown import REASONS

# The class column of an image that is none of the classes (`--json`: label null, unknown true).
UNKNOWN_LABEL = "unknown"


def reason_words(names: tuple[str, ...]) -> str:
    return "; ".join(REASONS[name] for name in names)


def format_row(result: LabelledResult, top_k: int, width: int) -> str:
    """Path, class (or unknown), confidence and the top-k classes; an unknown photo's reason in words after them."""
    ranked = sorted(result.probabilities.items(), key=lambda item: -item[1])[:top_k]
    top = "  ".join(f"{label} {p:.3f}" for label, p in ranked)
    label = UNKNOWN_LABEL if result.unknown else result.label
    reason = f"  ({reason_words(result.unknown_reason)})" if result.unknown else ""
    return f"{result.path!s:<{width}}  {label:<10}  {result.confidence:>10.3f}  {top}{reason}"


def unknown_summary(results: list[LabelledResult], predictor: Predictor) -> str | None:
    """One line counting the photos flagged unknown and by which score; None when none is."""
    unknown = [result for result in results if result.unknown]
    if not unknown:
        return None
    counts = {name: sum(name in result.unknown_reason for result in unknown) for name in predictor.unknown_scores}
    by_score = "; ".join(f"{REASONS[name]}: {count}" for name, count in counts.items() if count)
    note = f"; {predictor.unknown_note}" if predictor.unknown_note else ""
    classes = ", ".join(predictor.classes)
    return f"unknown: {len(unknown)} of {len(results)} images are none of {classes} ({by_score}{note})"


def print_scores(scores: dict, file: TextIO) -> None:
    """Accuracy over the labelled images (from `classification_scores`) and the list of misses."""
    unlabelled = scores["unlabelled"]
    print(
        f"accuracy: {scores['accuracy']:.1%} ({scores['correct']}/{scores['images']} labelled images"
        + (f"; {unlabelled} without a label not counted)" if unlabelled else ")"),
        file=file,
    )
    for miss in scores["misses"]:
        print(
            f"miss: {miss['path']}  true {miss['true']}, predicted {miss['predicted']} ({miss['confidence']:.3f})",
            file=file,
        )


def predict_command(
    targets: list[Path], model_path: Path, top_k: int, as_json: bool, tta: str, batch_size: int, decode_threads: int
) -> int:
    """`imageclf predict`: a table (or JSON list) of predictions, the accuracy when images are labelled.

    Each unreadable file, missing path or folder without images gets one error line on stderr and exit status 1;
    the other images are still predicted.
    """
    predictor = load_predictor(model_path)
    if not predictor.unknown_scores:
        print(f"note: {PREDATES}", file=sys.stderr)
    found, errors = files_to_predict(targets)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    width = max((len(str(path)) for path, _ in found), default=4)
    if found and not as_json:
        print(f"{'path':<{width}}  {'class':<10}  {'confidence':>10}  top-{min(top_k, len(predictor.classes))}")
    results = []
    predictions = predict_files(predictor, [path for path, _ in found], tta, batch_size, decode_threads=decode_threads)
    for prediction, (_, target) in zip(predictions, found, strict=True):
        if prediction.probabilities is None:
            print(f"error: cannot read '{prediction.path}': {prediction.error}", file=sys.stderr)
            errors.append(prediction.error)
            continue
        result = labelled_result(prediction, target, predictor.classes)
        results.append(result)
        if not as_json:
            print(format_row(result, top_k, width), flush=True)
    scores = labelled_scores(results, predictor.classes, unreadable=len(found) - len(results))
    if as_json:
        print(json.dumps([result.as_json() for result in results], indent=2))
    report = sys.stderr if as_json else sys.stdout
    summary = unknown_summary(results, predictor)
    if summary:
        print(summary, file=report)
    if scores:
        print_scores(scores, report)
    return 1 if errors else 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="an image file or a folder")
    add_model_file_argument(parser)
    parser.add_argument("--top-k", type=positive_int, default=3, help="classes to list per image (3)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument(
        "--tta",
        choices=TTA,
        default=DEFAULT_TTA,
        help=f"views as in evaluate.tta: flip averages the photo and its mirror image (default: {DEFAULT_TTA})",
    )
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (32)")
    parser.add_argument(
        "--decode-threads",
        type=int,
        default=DECODE_THREADS,
        metavar="N",
        help=f"threads decoding the next batch while the model runs; 0: none (default: {DECODE_THREADS})",
    )


def run(args: argparse.Namespace) -> int:
    return predict_command(
        args.paths, args.model, args.top_k, args.json, args.tta, args.batch_size, args.decode_threads
    )
