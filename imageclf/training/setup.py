"""A training run's set-up, shared by the train stage, `imageclf lr-find` and the benchmarks: the seed, the
classifier `train.model` for `train.mode`, the datasets, the device (`set_up`), and what the mode trains on
(`inputs`: the whole classifier on images, or its head on the frozen backbone's stored features)."""

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from imageclf.backbone.frozen import FrozenBackbone
from imageclf.core.device import is_distributed, rank, select_device
from imageclf.data.datasets import ImageDataset
from imageclf.data.params import DataParams
from imageclf.models.architectures import preprocessing_for
from imageclf.models.classifier import Classifier, create_model
from imageclf.training.modes import FEATURES, IMAGES, MODES, Mode
from imageclf.training.params import TrainParams


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Run:
    """What a training run starts from: its params, its mode, the classifier (pretrained as the mode says, its
    head new), the training and val images of the two manifest folders, and the device."""

    data: DataParams
    train: TrainParams
    mode: Mode
    classifier: Classifier
    train_data: ImageDataset
    val_data: ImageDataset
    device: torch.device


def set_up(data: DataParams, train: TrainParams, train_dir: Path, val_dir: Path) -> Run:
    """Seed everything, then build the classifier (so its new head's initial weights are the same every run), read
    the two manifest folders and pick the device."""
    mode = MODES[train.mode]
    seed_everything(train.seed)
    preprocessing = preprocessing_for(train.model, data.image_size)
    classifier = create_model(
        train.model,
        len(data.classes),
        data.image_size,
        pretrained=mode.pretrained,
        weights=Path(train.weights) if train.weights else None,
        dropout=train.dropout,
    )
    train_data = ImageDataset.from_manifest(train_dir, data.classes, preprocessing)
    val_data = ImageDataset.from_manifest(val_dir, data.classes, preprocessing)
    return Run(data, train, mode, classifier, train_data, val_data, select_device(train.device))


@dataclass(frozen=True)
class Inputs:
    """What trains (`network`: the classifier, or only its head) and the data it trains and validates on.

    `frozen`: the frozen backbone whose features those are, when they are features. `threads`: PyTorch's CPU threads
    while it trains (None: as they are): a head's matrices are too small to share out between threads, which then
    only wait for each other.
    """

    network: nn.Module
    train: Dataset
    val: Dataset
    frozen: FrozenBackbone | None = None
    threads: int | None = None


def image_inputs(run: Run) -> Inputs:
    """The whole classifier on decoded images."""
    return Inputs(run.classifier, run.train_data, run.val_data)


def feature_inputs(run: Run) -> Inputs:
    """The head on the frozen backbone's features of both sets, from the feature store or computed once on
    `train.backbone_runtime` at `train.backbone_precision`."""
    run.classifier.backbone.requires_grad_(False)
    if rank() > 0:
        torch.distributed.barrier()  # the first process fills the feature store; the others then read it
    frozen = FrozenBackbone.for_training(
        run.train.model,
        run.classifier.backbone,
        run.train.backbone_runtime,
        run.train.backbone_precision,
        run.device,
        run.train_data,
        run.train.seed,
    )
    train_features, val_features = (
        frozen.features(data, name).dataset for data, name in ((run.train_data, "train"), (run.val_data, "val"))
    )
    if rank() == 0 and is_distributed():
        torch.distributed.barrier()
    return Inputs(run.classifier.head, train_features, val_features, frozen, threads=1)


# How each mode's data reaches the network that trains (`Mode.inputs`).
INPUTS: dict[str, Callable[[Run], Inputs]] = {IMAGES: image_inputs, FEATURES: feature_inputs}


def feed(run: Run) -> Inputs:
    """What `run` trains and on what, as its mode says."""
    return INPUTS[run.mode.inputs](run)
