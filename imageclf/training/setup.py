"""A training run's set-up, shared by the train stage, `imageclf lr-find` and the benchmarks: the seed, the
classifier `train.model` for `train.mode`, the datasets, the online augmentation, the device (`set_up`), and what
the mode trains on (`feed`: the whole classifier on decoded, augmented images, its head on the frozen backbone's
stored features, or its last blocks and head on the stored activations of the frozen blocks before them)."""

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from imageclf.backbone.frozen import FrozenBackbone
from imageclf.core.device import is_distributed, rank, select_device
from imageclf.data.datasets import ImageDataset
from imageclf.data.decoded import DecodedImages, decoded_pixels
from imageclf.data.online_augmentation import OnlineAugmentation
from imageclf.data.params import DataParams, OnlineAugmentParams
from imageclf.models.architectures import preprocessing_for
from imageclf.models.classifier import Classifier, create_model, split_backbone
from imageclf.training.modes import ACTIVATIONS, FEATURES, IMAGES, Mode
from imageclf.training.params import TrainParams


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Run:
    """What a training run starts from: its params, its mode, the classifier (pretrained as the mode says, its
    head new), the training and val images of the two manifest folders, the device, and the online augmentation
    of training images where the mode trains on images (None: none)."""

    data: DataParams
    train: TrainParams
    mode: Mode
    classifier: Classifier
    train_data: ImageDataset
    val_data: ImageDataset
    device: torch.device
    augmentation: OnlineAugmentation | None = None


def set_up(
    data: DataParams, train: TrainParams, train_dir: Path, val_dir: Path, online: OnlineAugmentParams | None = None
) -> Run:
    """Seed everything, then build the classifier (so its new head's initial weights are the same every run), read
    the two manifest folders and pick the device; `online`: `augment.online` (None: no online augmentation)."""
    mode = train.training_mode
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
    augmentation = OnlineAugmentation(online) if online is not None else None
    return Run(data, train, mode, classifier, train_data, val_data, select_device(train.device), augmentation)


Features = Callable[[Dataset], torch.Tensor]


@dataclass(frozen=True)
class Inputs:
    """What trains (`network`: the classifier, only its head, or its last blocks and head) and the data it trains
    and validates on.

    `features`: the backbone's features of such data, as the network stands (the none-of-these detector's, and
    on activations the head's first training set). `frozen`: the frozen backbone (or frozen first blocks) whose
    output the data is, when stored. `threads`: PyTorch's CPU threads while it trains (None: as they are): a
    head's matrices are too small to share out between threads, which then only wait for each other.
    """

    network: nn.Module
    train: Dataset
    val: Dataset
    features: Features
    frozen: FrozenBackbone | None = None
    threads: int | None = None


def batched_features(backbone: nn.Module, batches: Callable[[Dataset], Iterable], device: torch.device) -> Features:
    """The features `backbone` gives each item of a dataset, in order, in evaluation mode, on `device` as `fit`
    places a network (channels_last: convolutions run faster on a CPU)."""

    def features(dataset: Dataset) -> torch.Tensor:
        backbone.to(device, memory_format=torch.channels_last).eval()
        with torch.inference_mode():
            return torch.cat([backbone(inputs.to(device)).float().cpu() for inputs, *_ in batches(dataset)])

    return features


def image_inputs(run: Run) -> Inputs:
    """The whole classifier on images decoded once (the decoded-image store), the training images augmented afresh
    in every epoch; features of the images as they are."""
    train_pixels, val_pixels = first_process_first(lambda: decoded_pixels([run.train_data, run.val_data]))
    preprocess = run.train_data.preprocess
    train = DecodedImages(train_pixels, run.train_data.labels, preprocess, run.augmentation, run.train.seed)
    val = DecodedImages(val_pixels, run.val_data.labels, preprocess)

    def batches(dataset: DecodedImages) -> Iterable:
        plain = dataset.plain()
        return (plain.batch(index) for index in torch.arange(len(plain)).split(run.train.batch_size))

    features = batched_features(run.classifier.backbone, batches, run.device)
    return Inputs(run.classifier, train, val, features)


T = TypeVar("T")


def first_process_first(fill: Callable[[], T]) -> T:
    """`fill()`, which fills a store of this machine's cache: under torchrun the first process fills it, then the
    others read it."""
    if rank() > 0:
        torch.distributed.barrier()
    filled = fill()
    if rank() == 0 and is_distributed():
        torch.distributed.barrier()
    return filled


def stored_outputs(run: Run, frozen: FrozenBackbone) -> tuple[TensorDataset, TensorDataset]:
    """`frozen`'s output for the training and val images, from the feature store or computed once."""
    return first_process_first(
        lambda: tuple(
            frozen.features(data, name).dataset for data, name in ((run.train_data, "train"), (run.val_data, "val"))
        )
    )


def feature_inputs(run: Run) -> Inputs:
    """The head on the frozen backbone's features of both sets, from the feature store or computed once on
    `train.backbone_runtime` at `train.backbone_precision`."""
    run.classifier.backbone.requires_grad_(False)
    frozen = FrozenBackbone.for_training(
        run.train.model,
        run.classifier.backbone,
        run.train.backbone_runtime,
        run.train.backbone_precision,
        run.device,
        run.train_data,
        run.train.seed,
    )
    train_features, val_features = stored_outputs(run, frozen)
    return Inputs(run.classifier.head, train_features, val_features, stored_tensors, frozen, threads=1)


def stored_tensors(dataset: Dataset) -> torch.Tensor:
    """Stored features are the features."""
    return dataset.tensors[0]


def activation_inputs(run: Run) -> Inputs:
    """The backbone's last `train.trainable_blocks` blocks (and its tail) with the head, on the activations of
    the frozen blocks before them: PyTorch in float32 computes those once per image into the feature store, so
    an epoch runs only the blocks that train."""
    first, last = split_backbone(run.train.model, run.classifier.backbone, run.train.trainable_blocks)
    first.requires_grad_(False)
    frozen = FrozenBackbone.for_training(
        f"{run.train.model} without its last {run.train.trainable_blocks} blocks",
        first,
        "torch",
        "fp32",
        run.device,
        run.train_data,
        run.train.seed,
    )
    train_activations, val_activations = stored_outputs(run, frozen)

    def batches(dataset: TensorDataset) -> Iterable:
        return zip(dataset.tensors[0].split(run.train.batch_size), strict=True)

    features = batched_features(last, batches, run.device)
    network = Classifier.of(last, run.classifier.head)
    return Inputs(network, train_activations, val_activations, features, frozen)


# How each mode's data reaches the network that trains (`Mode.inputs`).
INPUTS: dict[str, Callable[[Run], Inputs]] = {
    IMAGES: image_inputs,
    FEATURES: feature_inputs,
    ACTIVATIONS: activation_inputs,
}


def feed(run: Run) -> Inputs:
    """What `run` trains and on what, as its mode says."""
    return INPUTS[run.mode.inputs](run)
