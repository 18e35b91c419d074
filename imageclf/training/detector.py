"""After training, the none-of-these detector (`models.unknown.UnknownDetector`): fitted on the training photos'
features and calibrated on val's, so the model file flags photos of none of its classes.

A frozen backbone's features are already there (the stored features the head trained on), and its ImageNet
classifier still reads them. A backbone that trained (fromzero, fine_tuning) costs one more pass over the training
and val images for its new features, and its ImageNet classifier, if it ever had one, no longer fits them: the
feature distance alone decides, and the detector says so.
"""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from imageclf.core.device import loader_options
from imageclf.data.datasets import ImageDataset
from imageclf.models.architectures import model_spec
from imageclf.models.classifier import read_state_dict
from imageclf.models.unknown import UnknownDetector, imagenet_classifier
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


def backbone_features(run: Run, dataset: ImageDataset) -> np.ndarray:
    """The trained backbone's features of every image of `dataset`, in order."""
    backbone = run.classifier.backbone.eval()
    loader = DataLoader(dataset, batch_size=run.train.batch_size, **loader_options(run.device))
    with torch.inference_mode():
        return torch.cat([backbone(images.to(run.device)).float().cpu() for images, _ in loader]).numpy()


def fit_detector(run: Run, fed: Inputs) -> tuple[UnknownDetector, dict]:
    """The detector of the trained run, and what `metrics/details/train.json` records of it: the scores, their
    thresholds, the val share flagged (overall and per score) and, when a score is missing, why."""
    if fed.frozen is not None:
        features, labels = (tensor.numpy() for tensor in fed.train.tensors)
        val = fed.val.tensors[0].numpy()
    else:
        features, labels = backbone_features(run, run.train_data), np.array(run.train_data.labels)
        val = backbone_features(run, run.val_data)
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
