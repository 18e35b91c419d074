"""Classification metrics, confusion matrices and precision-recall curves, all computed by scikit-learn."""

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    confusion_matrix,
    precision_recall_curve,
)

SCORES = ("precision", "recall", "f1")


def classification_scores(
    true: list[str],
    probabilities: np.ndarray,
    classes: list[str],
    paths: list[str],
    unlabelled: int = 0,
    unreadable: int = 0,
) -> dict:
    """The one scorer, so that every scored set (the test split, `evaluate.test_images`, a labelled folder given to
    `imageclf predict`, the benchmark's hold-out folder) is reported with the same keys.

    `probabilities` has one row per image (`true[i]`, file `paths[i]`) and one column per class, in the order of
    `classes`; the prediction is the most probable class. Returns the accuracy; the counts (`images` scored,
    `correct`, and the files that could not be scored: `unlabelled`, `unreadable`); precision, recall, F1, support
    and average precision per class (average precision is None for a class with no image); macro and weighted
    averages; and the misses, most confident first.
    """
    predicted = [classes[index] for index in probabilities.argmax(axis=1)]
    report = classification_report(true, predicted, labels=classes, output_dict=True, zero_division=0)

    def scores(row: dict) -> dict:
        return {name: float(row[f"{name}-score" if name == "f1" else name]) for name in SCORES}

    def average_precision(index: int, label: str) -> float | None:
        is_label = np.array(true) == label
        return float(average_precision_score(is_label, probabilities[:, index])) if is_label.any() else None

    misses = [
        {"path": path, "true": actual, "predicted": guess, "confidence": float(row.max())}
        for path, actual, guess, row in zip(paths, true, predicted, probabilities, strict=True)
        if actual != guess
    ]
    correct = len(true) - len(misses)
    return {
        "accuracy": correct / len(true),
        "images": len(true),
        "correct": correct,
        "unlabelled": unlabelled,
        "unreadable": unreadable,
        "macro_avg": scores(report["macro avg"]),
        "weighted_avg": scores(report["weighted avg"]),
        "per_class": {
            label: {
                **scores(report[label]),
                "support": int(report[label]["support"]),
                "average_precision": average_precision(index, label),
            }
            for index, label in enumerate(classes)
        },
        "misses": sorted(misses, key=lambda miss: -miss["confidence"]),
    }


def confusion_matrices(true: list[str], predicted: list[str], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The confusion matrix (rows: true class, columns: predicted class) in counts and normalised per true class."""
    counts = confusion_matrix(true, predicted, labels=classes)
    normalised = confusion_matrix(true, predicted, labels=classes, normalize="true")
    return counts, np.nan_to_num(normalised)


def precision_recall_curves(true: list[str], probabilities: np.ndarray, classes: list[str]) -> dict[str, list[dict]]:
    """One-vs-rest precision-recall curve per class: rows of precision, recall and the probability threshold.

    Rows run from the highest threshold to the lowest (recall rising), the order in which a line plot that sorts
    by recall draws the curve's steps correctly.
    """
    curves = {}
    for index, label in enumerate(classes):
        is_label = np.array(true) == label
        precision, recall, thresholds = precision_recall_curve(is_label, probabilities[:, index])
        curves[label] = [
            {"recall": float(r), "precision": float(p), "threshold": float(t)}
            for p, r, t in zip(precision, recall, [*thresholds, 1.0], strict=True)
        ][::-1]
    return curves
