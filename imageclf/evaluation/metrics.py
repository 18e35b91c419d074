"""Classification metrics, confusion matrices and precision-recall curves, in NumPy.

They compute what scikit-learn's `classification_report` (zero_division=0), `average_precision_score`,
`precision_recall_curve` and `confusion_matrix` do, with the same arithmetic (tests/test_metrics.py checks equality
with scikit-learn), without the cost of importing scikit-learn in every evaluate stage and labelled `predict`.
"""

import numpy as np

from imageclf.inference.photos import LabelledResult


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
    counts = confusion_matrix(true, predicted, classes)
    found, support, called = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
    per_class = {
        "precision": divide_or_zero(found, called),
        "recall": divide_or_zero(found, support),
        "f1": divide_or_zero(2.0 * found, support.astype(np.float64) + called),
    }

    def averages(weights: np.ndarray | None) -> dict:
        return {name: float(np.average(values, weights=weights)) for name, values in per_class.items()}

    def average_precision(index: int, label: str) -> float | None:
        is_label = np.array(true) == label
        if not is_label.any():
            return None
        precision, recall, _ = precision_recall_curve(is_label, probabilities[:, index])
        return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))  # the step function's integral

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
        "macro_avg": averages(None),
        "weighted_avg": averages(support),
        "per_class": {
            label: {
                **{name: float(values[index]) for name, values in per_class.items()},
                "support": int(support[index]),
                "average_precision": average_precision(index, label),
            }
            for index, label in enumerate(classes)
        },
        "misses": sorted(misses, key=lambda miss: -miss["confidence"]),
    }


def labelled_scores(results: list[LabelledResult], classes: list[str], unreadable: int = 0) -> dict | None:
    """`classification_scores` over the results that carry a true label; None when none does."""
    labelled = [result for result in results if result.true_label is not None]
    if not labelled:
        return None
    return classification_scores(
        [result.true_label for result in labelled],
        np.array([[result.probabilities[label] for label in classes] for result in labelled]),
        classes,
        [str(result.path) for result in labelled],
        unlabelled=len(results) - len(labelled),
        unreadable=unreadable,
    )


def divide_or_zero(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator as float64, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    return numerator / np.where(denominator == 0, 1, denominator)


def confusion_matrix(true: list[str], predicted: list[str], classes: list[str]) -> np.ndarray:
    """Counts: rows the true class, columns the predicted class, both in the order of `classes`."""
    index = {label: position for position, label in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(counts, ([index[label] for label in true], [index[label] for label in predicted]), 1)
    return counts


def confusion_matrices(true: list[str], predicted: list[str], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The confusion matrix (rows: true class, columns: predicted class) in counts and normalised per true class."""
    counts = confusion_matrix(true, predicted, classes)
    with np.errstate(all="ignore"):
        normalised = counts / counts.sum(axis=1, keepdims=True)
    return counts, np.nan_to_num(normalised)


def precision_recall_curve(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score taken as the threshold, thresholds ascending, then the
    (precision 1, recall 0) end point: scikit-learn's `precision_recall_curve`."""
    order = np.argsort(scores, kind="stable")[::-1]
    scores, is_positive = scores[order], np.asarray(is_positive)[order]
    last_of_each_score = np.append(np.flatnonzero(np.diff(scores)), len(scores) - 1)
    true_positives = np.cumsum(is_positive.astype(np.float64))[last_of_each_score]
    false_positives = 1 + last_of_each_score.astype(np.float64) - true_positives
    precision = divide_or_zero(true_positives, true_positives + false_positives)
    recall = true_positives / true_positives[-1] if true_positives[-1] else np.ones_like(true_positives)
    return np.append(precision[::-1], 1.0), np.append(recall[::-1], 0.0), scores[last_of_each_score][::-1]


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
