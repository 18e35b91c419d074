"""The train stage's work: set the run up, train what its mode trains on what its mode feeds it, choose the unknown
threshold on val, and return the model file's contents (`train_from_params`)."""

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from imageclf.core.device import rank
from imageclf.data.datasets import ImageDataset
from imageclf.data.params import DataParams
from imageclf.models.model_file import SavedModel
from imageclf.training.loop import Checkpointing, FitResult, fit, fit_choosing_weight_decay, torch_threads
from imageclf.training.optim import WEIGHT_DECAY_AUTO
from imageclf.training.params import TrainParams
from imageclf.training.setup import Inputs, Run, feed, set_up

# The share of val photos the unknown threshold may flag: it is set as high as that allows.
UNKNOWN_VAL_SHARE = 0.01


def unknown_threshold(confidences: np.ndarray, share: float = UNKNOWN_VAL_SHARE) -> float:
    """The largest threshold under which at most floor(share × n) of these top probabilities fall: a photo
    is called none of the classes when its top probability is under it (`predictor.is_unknown`)."""
    ranked = np.sort(np.asarray(confidences, dtype=np.float64))
    return float(ranked[math.floor(round(share * len(ranked), 9))])


def choose_unknown_threshold(
    result: FitResult, network: nn.Module, val_inputs: Dataset, batch_size: int, device: torch.device
) -> FitResult:
    """Set the result's unknown threshold from the trained `network`'s top softmax probability on each val input
    (images, or their frozen features when `network` is the head): val photos are all of the classes, so few of
    them may fall under it."""
    network.eval()
    with torch.no_grad():
        confidences = torch.cat(
            [
                network(inputs.to(device)).float().softmax(dim=1).amax(dim=1).cpu()
                for inputs, _ in DataLoader(val_inputs, batch_size=batch_size)
            ]
        ).numpy()
    result.unknown_threshold = unknown_threshold(confidences)
    result.val_unknown_share = float(np.mean(confidences < result.unknown_threshold))
    return result


def run_fingerprint(data: DataParams, train: TrainParams, train_data: ImageDataset, val_data: ImageDataset) -> str:
    """A hash of everything a checkpoint depends on: the train params, classes, input size, and each image's
    label and bytes in the order trained on.

    The bytes, not the manifests: an augmented manifest names each image by its source photo's hash, so a
    changed `augment.seed` or `augment.transforms` keeps the manifest and changes the pictures.
    """
    digest = hashlib.sha256()
    settings = {"train": asdict(train), "classes": data.classes, "image_size": data.image_size}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for dataset in (train_data, val_data):
        digest.update(str(len(dataset)).encode())
        for file_digest, label in zip(dataset.digests, dataset.labels, strict=True):
            digest.update(f"{label}:{file_digest}".encode())
    return digest.hexdigest()


def train_run(
    run: Run, checkpointing: Checkpointing | None = None, on_epoch: Callable[[FitResult], None] | None = None
) -> tuple[FitResult, Inputs]:
    """Train what the run's mode trains, on what the mode feeds it, and choose the unknown threshold on val; the
    classifier ends holding its best epoch's weights.

    Where the mode trains a head on stored features, an epoch costs milliseconds, and `train.weight_decay: auto`
    tries several L2 strengths (`fit_choosing_weight_decay`); elsewhere each would be a whole training run, and
    auto means 0.
    """
    train = run.train
    fed = feed(run)
    with torch_threads(fed.threads):
        if train.weight_decay == WEIGHT_DECAY_AUTO and run.mode.chooses_weight_decay:
            result = fit_choosing_weight_decay(fed.network, fed.train, fed.val, train, run.device, on_epoch)
        else:
            config = replace(train, weight_decay=0.0) if train.weight_decay == WEIGHT_DECAY_AUTO else train
            result = fit(fed.network, fed.train, fed.val, config, run.device, checkpointing, on_epoch)
        choose_unknown_threshold(result, fed.network, fed.val, train.batch_size, run.device)
    return result, fed


def train_from_params(
    data: DataParams,
    train: TrainParams,
    train_dir: Path,
    val_dir: Path,
    checkpoint_path: Path | None = None,
    on_epoch: Callable[[FitResult], None] | None = None,
) -> tuple[SavedModel, FitResult]:
    """Train `train.model` in `train.mode` on the two manifest folders and return the model file's contents.

    With `checkpoint_path`, a run killed part way resumes from its last checkpoint; the checkpoint is removed once
    training has finished.
    """
    run = set_up(data, train, train_dir, val_dir)
    checkpointing = None
    if checkpoint_path is not None:
        fingerprint = run_fingerprint(data, train, run.train_data, run.val_data)
        checkpointing = Checkpointing(Path(checkpoint_path), train.checkpoint_every, fingerprint)
    result, fed = train_run(run, checkpointing, on_epoch)
    if checkpointing is not None and rank() == 0:
        checkpointing.remove()
    classifier = run.classifier.cpu().eval()
    saved = SavedModel(
        classifier, train.model, data.classes, run.train_data.preprocess, unknown_threshold=result.unknown_threshold
    )
    if fed.frozen is not None and fed.frozen.carries_graph:
        saved = replace(saved, backbone_onnx=fed.frozen.onnx_graph(), backbone_precision=train.backbone_precision)
    return saved, result
