"""After training, the none-of-these detector (`models.unknown.UnknownDetector`): fitted on the training photos'
features and calibrated on val's, so the model file flags photos of none of its classes.

A frozen backbone's features are already there (the stored features the head trained on), and its ImageNet
classifier still reads them. A backbone that trained (fromzero, fine_tuning, trainable blocks) costs one more pass
for its new features (over the images, or the stored activations of its frozen blocks), and its ImageNet
classifier, if it ever had one, no longer fits them: the feature distance alone decides, and the detector says so.
"""

from pathlib import Path

import numpy as np

from imageclf.models.architectures import model_spec
from imageclf.models.classifier import read_state_dict
from imageclf.models.unknown import UnknownDetector, imagenet_classifier
from imageclf.training.loop import labels_of
from imageclf.training.setup import Inputs, Run


def imagenet_head(run: Run, width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The ImageNet classifier that reads these features: that of `train.weights` when given (a whole architecture's
    state dict holds one; a model file's backbone does not), else the architecture's pretrained one. None when the
    backbone trained, has no pretrained weights, or the classifier does not read `width` features."""
    if run.mode.trains_backbone:
        return None
    if run.train.weights:
        state_dict = read_state_dict(Path(run.train.weights))
    else:
        weights = model_spec(run.train.model).imagenet_weights
        state_dict = weights() if weights is not None else {}
    classifier = imagenet_classifier(state_dict)
    return classifier if classifier is not None and classifier[0].shape[1] == width else None


def fit_detector(run: Run, fed: Inputs) -> tuple[UnknownDetector, dict]:
    """The detector of the trained run, and what `metrics/details/train.json` records of it: the scores, their
    thresholds, the val share flagged (overall and per score) and, when a score is missing, why."""
    features, val = (fed.features(dataset).numpy() for dataset in (fed.train, fed.val))
    labels = labels_of(fed.train).numpy()
    detector = UnknownDetector.fit(features, labels, run.data.classes, val, imagenet_head(run, features.shape[1]))
    flags = detector.flags(val)
    details = {
        "scores": detector.score_names,
        "thresholds": detector.thresholds,
        "val_flagged": float(flags.unknown.mean()),
        "val_flagged_by_score": {
            name: sum(name in reason for reason in flags.reasons) for name in detector.score_names
        },
    }
    return detector, details | ({"note": detector.note} if detector.note else {})
