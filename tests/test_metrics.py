"""Metrics against values computed by hand on six predictions, and against scikit-learn on random ones."""

import numpy as np
import pytest

from imageclf.evaluation.metrics import classification_scores, confusion_matrices, precision_recall_curves
from tests.helpers import CLASSES

TRUE = ["cat", "cat", "cat", "dog", "dog", "horse"]
PATHS = [f"photo{index}.jpg" for index in range(6)]
# predicted: cat, cat, dog, dog, horse, horse
PROBABILITIES = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.6, 0.3, 0.1],
        [0.3, 0.6, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.4, 0.5],
        [0.1, 0.2, 0.7],
    ]
)


def test_accuracy_per_class_scores_averages_and_misses() -> None:
    metrics = classification_scores(TRUE, PROBABILITIES, CLASSES, PATHS, unlabelled=2, unreadable=1)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert (metrics["images"], metrics["correct"], metrics["unlabelled"], metrics["unreadable"]) == (6, 4, 2, 1)
    assert metrics["misses"] == [  # most confident first
        {"path": "photo2.jpg", "true": "cat", "predicted": "dog", "confidence": 0.6},
        {"path": "photo4.jpg", "true": "dog", "predicted": "horse", "confidence": 0.5},
    ]
    reversed_input = classification_scores(TRUE[::-1], PROBABILITIES[::-1], CLASSES, PATHS[::-1])
    assert [miss["path"] for miss in reversed_input["misses"]] == ["photo2.jpg", "photo4.jpg"]
    # cat: 2 of 3 found, no false alarm; dog: 1 of 2 found, 1 false alarm (a cat); horse: 1 of 1, 1 false alarm
    expected = {
        "cat": {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3, "average_precision": 1.0},
        "dog": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "average_precision": 0.5 + 0.5 * 2 / 3},
        "horse": {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1, "average_precision": 1.0},
    }
    assert metrics["per_class"] == {label: pytest.approx(row) for label, row in expected.items()}
    assert metrics["macro_avg"] == pytest.approx({"precision": 2 / 3, "recall": 13 / 18, "f1": (0.8 + 0.5 + 2 / 3) / 3})
    assert metrics["weighted_avg"] == pytest.approx(
        {"precision": (3 + 1 + 0.5) / 6, "recall": 4 / 6, "f1": (3 * 0.8 + 2 * 0.5 + 2 / 3) / 6}
    )


def test_a_class_without_images_has_no_average_precision() -> None:
    metrics = classification_scores(TRUE[:5], PROBABILITIES[:5], CLASSES, PATHS[:5])
    assert metrics["per_class"]["horse"]["support"] == 0 and metrics["per_class"]["horse"]["average_precision"] is None
    assert metrics["per_class"]["dog"]["average_precision"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_confusion_matrices_count_and_normalise_per_true_class() -> None:
    predicted = [CLASSES[i] for i in PROBABILITIES.argmax(axis=1)]
    counts, normalised = confusion_matrices(TRUE, predicted, CLASSES)
    assert counts.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert normalised == pytest.approx(np.array([[2 / 3, 1 / 3, 0], [0, 0.5, 0.5], [0, 0, 1]]))


def test_precision_recall_curve_of_each_class() -> None:
    curves = precision_recall_curves(TRUE, PROBABILITIES, CLASSES)
    assert list(curves) == CLASSES
    assert all(set(row) == {"recall", "precision", "threshold"} for rows in curves.values() for row in rows)
    # dog scores, highest first: 0.7 dog, 0.6 cat, 0.4 dog, 0.3 cat, 0.2 horse, 0.1 cat
    dog = {(round(row["recall"], 4), round(row["precision"], 4)) for row in curves["dog"]}
    assert {(0.0, 1.0), (0.5, 1.0), (0.5, 0.5), (1.0, round(2 / 3, 4)), (1.0, 0.5), (1.0, 0.4), (1.0, 0.3333)} == dog
    thresholds = [row["threshold"] for row in curves["dog"]]
    assert thresholds == sorted(thresholds, reverse=True), "rows run from the highest threshold to the lowest"


@pytest.mark.parametrize("seed", range(5))
def test_every_metric_equals_scikit_learns(seed: int) -> None:
    """The same numbers, to the last bit, as the scikit-learn functions they replace, on random predictions with
    tied scores (probabilities rounded to one decimal) and, for some seeds, a class without images."""
    from sklearn import metrics as sklearn

    rng = np.random.default_rng(seed)
    size = 40
    present = CLASSES if seed % 2 == 0 else CLASSES[:2]
    true = [str(label) for label in rng.choice(present, size)]
    probabilities = np.round(rng.dirichlet(np.ones(3), size), 1 if seed < 3 else 6)
    paths = [f"{index}.jpg" for index in range(size)]
    ours = classification_scores(true, probabilities, CLASSES, paths)
    predicted = [CLASSES[index] for index in probabilities.argmax(axis=1)]
    report = sklearn.classification_report(true, predicted, labels=CLASSES, output_dict=True, zero_division=0)
    for name, row in [("macro_avg", "macro avg"), ("weighted_avg", "weighted avg"), *[(c, c) for c in CLASSES]]:
        scores = ours[name] if name in ("macro_avg", "weighted_avg") else ours["per_class"][name]
        assert scores["precision"] == report[row]["precision"]
        assert scores["recall"] == report[row]["recall"]
        assert scores["f1"] == report[row]["f1-score"]
    for index, label in enumerate(CLASSES):
        is_label = np.array(true) == label
        assert ours["per_class"][label]["support"] == int(is_label.sum())
        expected_ap = sklearn.average_precision_score(is_label, probabilities[:, index]) if is_label.any() else None
        assert ours["per_class"][label]["average_precision"] == expected_ap
        if is_label.any():
            precision, recall, thresholds = sklearn.precision_recall_curve(is_label, probabilities[:, index])
            rows = precision_recall_curves(true, probabilities, CLASSES)[label][::-1]
            assert [row["precision"] for row in rows] == precision.tolist()
            assert [row["recall"] for row in rows] == recall.tolist()
            assert [row["threshold"] for row in rows] == [*thresholds.tolist(), 1.0]
    counts, normalised = confusion_matrices(true, predicted, CLASSES)
    assert counts.tolist() == sklearn.confusion_matrix(true, predicted, labels=CLASSES).tolist()
    with np.errstate(all="ignore"):
        expected = np.nan_to_num(sklearn.confusion_matrix(true, predicted, labels=CLASSES, normalize="true"))
    assert normalised.tolist() == expected.tolist()
