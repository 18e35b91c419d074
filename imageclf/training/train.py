"""The train stage's work: set the run up, train what its mode trains on what its mode feeds it, fit the
none-of-these detector, and return the model file's contents (`train_from_params`)."""

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from imageclf.core.device import rank
from imageclf.data.datasets import ImageDataset
from imageclf.data.params import DataParams, OnlineAugmentParams
from imageclf.models.model_file import SavedModel
from imageclf.training.detector import fit_detector
from imageclf.training.loop import (
    Checkpointing,
    FitResult,
    fit_at_weight_decay,
    fit_head_first,
    torch_threads,
)
from imageclf.training.params import TrainParams
from imageclf.training.setup import Inputs, Run, feed, set_up


def run_fingerprint(
    data: DataParams,
    train: TrainParams,
    online: OnlineAugmentParams | None,
    train_data: ImageDataset,
    val_data: ImageDataset,
) -> str:
    """A hash of everything a checkpoint depends on: the train params, the online augmentation, classes, input
    size, and each image's label and bytes in the order trained on.

    The bytes, not the manifests: an augmented manifest names each image by its source photo's hash, so a
    changed `augment.seed` or `augment.transforms` keeps the manifest and changes the pictures.
    """
    digest = hashlib.sha256()
    settings = {
        "train": asdict(train),
        "online": asdict(online) if online is not None else None,
        "classes": data.classes,
        "image_size": data.image_size,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for dataset in (train_data, val_data):
        digest.update(str(len(dataset)).encode())
        for file_digest, label in zip(dataset.digests, dataset.labels, strict=True):
            digest.update(f"{label}:{file_digest}".encode())
    return digest.hexdigest()


def train_run(
    run: Run, checkpointing: Checkpointing | None = None, on_epoch: Callable[[FitResult], None] | None = None
) -> tuple[FitResult, Inputs]:
    """Train what the run's mode trains, on what the mode feeds it; the classifier ends holding its best epoch's
    weights.

    Where the mode trains a head on stored features, an epoch costs milliseconds, and `train.weight_decay: auto`
    tries several L2 strengths (`fit_at_weight_decay`); from zero each would be a whole training run, and auto
    means 0. Where a pretrained backbone (or its last blocks) trains, the head trains alone first
    (`fit_head_first`).
    """
    train = run.train
    fed = feed(run)
    with torch_threads(fed.threads):
        if run.mode.fine_tunes:
            result = fit_head_first(
                fed.network, fed.train, fed.val, fed.features, train, run.device, checkpointing, on_epoch
            )
        else:
            choose = run.mode.chooses_weight_decay
            result = fit_at_weight_decay(
                fed.network, fed.train, fed.val, train, run.device, choose, checkpointing, on_epoch
            )
    return result, fed


def train_from_params(
    data: DataParams,
    train: TrainParams,
    train_dir: Path,
    val_dir: Path,
    online: OnlineAugmentParams | None = None,
    checkpoint_path: Path | None = None,
    on_epoch: Callable[[FitResult], None] | None = None,
) -> tuple[SavedModel, FitResult]:
    """Train `train.model` in `train.mode` on the two manifest folders (with `online`, `augment.online`, where the
    mode trains on images), fit the none-of-these detector on the training photos' features (calibrated on val's),
    and return the model file's contents.

    With `checkpoint_path`, a run killed part way resumes from its last checkpoint; the checkpoint is removed once
    training has finished.
    """
    run = set_up(data, train, train_dir, val_dir, online)
    checkpointing = None
    if checkpoint_path is not None:
        fingerprint = run_fingerprint(data, train, online, run.train_data, run.val_data)
        checkpointing = Checkpointing(Path(checkpoint_path), train.checkpoint_every, fingerprint)
    result, fed = train_run(run, checkpointing, on_epoch)
    if checkpointing is not None and rank() == 0:
        checkpointing.remove()
    detector = None
    if rank() == 0:  # the one process that writes the model file
        detector, result.unknown = fit_detector(run, fed)
    classifier = run.classifier.cpu().eval()
    saved = SavedModel(classifier, train.model, data.classes, run.train_data.preprocess, unknown=detector)
    if fed.frozen is not None and fed.frozen.carries_graph:
        saved = replace(saved, backbone_onnx=fed.frozen.onnx_graph(), backbone_precision=train.backbone_precision)
    return saved, result
