"""Classification metrics, confusion matrices and precision-recall curves, all computed by scikit-learn."""

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    confusion_matrix,
    precision_recall_curve,
)

SCORES = ("precision", "recall", "f1")


def classification_metrics(true: list[str], probabilities: np.ndarray, classes: list[str]) -> dict:
    """Accuracy; precision, recall, F1, support and average precision per class; macro and weighted averages.

    `probabilities` has one row per image and one column per class; the prediction is the most probable class.
    """
    predicted = [classes[index] for index in probabilities.argmax(axis=1)]
    report = classification_report(true, predicted, labels=classes, output_dict=True, zero_division=0)

    def scores(row: dict) -> dict:
        return {name: float(row[f"{name}-score" if name == "f1" else name]) for name in SCORES}

    return {
        "accuracy": float(np.mean(np.array(true) == np.array(predicted))),
        "images": len(true),
        "macro_avg": scores(report["macro avg"]),
        "weighted_avg": scores(report["weighted avg"]),
        "per_class": {
            label: {
                **scores(report[label]),
                "support": int(report[label]["support"]),
                "average_precision": float(average_precision_score(np.array(true) == label, probabilities[:, index])),
            }
            for index, label in enumerate(classes)
        },
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
