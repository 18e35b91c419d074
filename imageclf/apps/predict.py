"""`imageclf predict`: print each file's class and confidence (a table or JSON), and the accuracy when labelled."""

import json
import sys
from pathlib import Path
from typing import TextIO

from imageclf.inference.predictor import (
    LabelledResult,
    files_to_predict,
    labelled_result,
    labelled_scores,
    load_predictor,
    predict_files,
)

# The class column of an image that is none of the classes (`--json`: label null, unknown true).
UNKNOWN_LABEL = "unknown"


def format_row(result: LabelledResult, top_k: int, width: int) -> str:
    ranked = sorted(result.probabilities.items(), key=lambda item: -item[1])[:top_k]
    top = "  ".join(f"{label} {p:.3f}" for label, p in ranked)
    label = UNKNOWN_LABEL if result.unknown else result.label
    return f"{result.path!s:<{width}}  {label:<10}  {result.confidence:>10.3f}  {top}"


def print_summary(scores: dict, file: TextIO) -> None:
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
        result = labelled_result(prediction, target, predictor.classes, predictor.unknown_threshold)
        results.append(result)
        if not as_json:
            print(format_row(result, top_k, width), flush=True)
    scores = labelled_scores(results, predictor.classes, unreadable=len(found) - len(results))
    if as_json:
        print(json.dumps([result.as_json() for result in results], indent=2))
    summary = sys.stderr if as_json else sys.stdout
    unknown = sum(result.unknown for result in results)
    if unknown:
        print(
            f"unknown: {unknown} of {len(results)} images are none of {', '.join(predictor.classes)} "
            f"(top probability under {predictor.unknown_threshold:.3f})",
            file=summary,
        )
    if scores:
        print_summary(scores, summary)
    return 1 if errors else 0
