"""How well the model tells photos of none of its classes (`evaluate.ood_images`) from photos of its classes (the
test split): per score and for the rule that combines them, the share flagged (per subfolder too), the area under
the ROC curve and the false-positive rate at 95 % true-positive rate, the test photos being the positives.

A score is higher for a photo more like the training photos, so the ROC curve ranks by it. The combined rule flags
a photo when any score is under its threshold; its ranking is each photo's lowest percentile among the test photos
over the scores (`combined_scores`), which puts scores on different scales on one and is low when any one is.
"""

from pathlib import Path

import numpy as np

from imageclf.core.errors import UserError, warn
from imageclf.evaluation.params import EvaluateParams
from imageclf.inference.photos import files_to_predict, predict_files
from imageclf.inference.predictor import Predictor, Scored

COMBINED = "combined"
TRUE_POSITIVE_RATE = 0.95
# The group of a photo directly in the folder, beside those of its subfolders.
TOP_LEVEL = "."


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """The area under the ROC curve: the chance that a positive scores above a negative, ties counting half."""
    positives, negatives = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    below = np.searchsorted(np.sort(negatives), positives, side="left")
    not_above = np.searchsorted(np.sort(negatives), positives, side="right")
    return float((below + not_above).sum() / (2 * len(positives) * len(negatives)))


def fpr_at_tpr(positives: np.ndarray, negatives: np.ndarray, rate: float = TRUE_POSITIVE_RATE) -> float:
    """The share of negatives at or above the highest threshold that keeps at least `rate` of the positives."""
    ranked = np.sort(np.asarray(positives, np.float64))[::-1]
    threshold = ranked[int(np.ceil(round(rate * len(ranked), 9))) - 1]
    return float(np.mean(np.asarray(negatives, np.float64) >= threshold))


def combined_scores(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per photo (a row of `scores`, one column per score), the lowest over the scores of the share of `reference`
    photos (the test split) scoring at or under it: a test photo's own score counts, so only a photo below every test
    photo on some score gets 0."""
    shares = [
        np.searchsorted(np.sort(reference[:, column]), scores[:, column], side="right") / len(reference)
        for column in range(reference.shape[1])
    ]
    return np.min(shares, axis=0)


def groups_of(paths: list[Path], folder: Path) -> list[str]:
    """Each photo's subfolder of `folder` (its first level), or TOP_LEVEL."""
    parts = [path.relative_to(folder).parts for path in paths]
    return [names[0] if len(names) > 1 else TOP_LEVEL for names in parts]


def ood_photos(model: Predictor, folder: Path, config: EvaluateParams) -> tuple[list[Path], Scored]:
    """The readable photos of `folder` and their scores; unreadable ones are warned about and left out, a folder
    without images is refused."""
    found, _ = files_to_predict([folder])
    predictions = list(predict_files(model, [path for path, _ in found], "none", config.batch_size, "ood_images"))
    readable = [prediction for prediction in predictions if prediction.probabilities is not None]
    for prediction in predictions:
        if prediction.probabilities is None:
            warn(f"cannot read '{prediction.path}': {prediction.error}")
    if not readable:
        raise UserError(
            f"evaluate.ood_images '{folder}' holds no readable image files: put photos of none of the classes there, "
            'or set it to ""'
        )
    names = model.unknown_scores
    scores = [[prediction.unknown_scores[name] for name in names] for prediction in readable]
    flags = [[name in prediction.unknown_reason for name in names] for prediction in readable]
    return [prediction.path for prediction in readable], Scored(
        np.stack([prediction.probabilities for prediction in readable]),
        np.array(scores, dtype=np.float32).reshape(len(readable), len(names)),
        np.array(flags, dtype=bool).reshape(len(readable), len(names)),
    )


def ood_scores(model: Predictor, folder: Path, test: Scored, config: EvaluateParams) -> dict:
    """Per score and combined: the share of `folder`'s photos flagged (all and per subfolder), AUROC and the
    false-positive rate at 95 % true-positive rate against the test split's photos (`test`)."""
    paths, ood = ood_photos(model, folder, config)
    groups = np.array(groups_of(paths, folder))
    names = list(model.unknown_scores)
    columns = {
        name: (test.scores[:, index], ood.scores[:, index], ood.flags[:, index]) for index, name in enumerate(names)
    }
    if names:
        columns[COMBINED] = (
            combined_scores(test.scores, test.scores),
            combined_scores(test.scores, ood.scores),
            ood.flags.any(axis=1),
        )
    per_score = {
        name: {
            "flagged": float(flagged.mean()),
            "flagged_by_subfolder": {group: float(flagged[groups == group].mean()) for group in sorted(set(groups))},
            "auroc": auroc(in_distribution, outside),
            "fpr_at_95_tpr": fpr_at_tpr(in_distribution, outside),
        }
        for name, (in_distribution, outside, flagged) in columns.items()
    }
    flagged = ood.flags.any(axis=1)
    return {
        "folder": str(folder),
        "photos": len(paths),
        "photos_by_subfolder": {group: int((groups == group).sum()) for group in sorted(set(groups))},
        "flagged": float(flagged.mean()),
        "scores": per_score,
    }
