"""The training loop, read top to bottom: features once (frozen backbone), then epochs of train and validate."""

import copy
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm import tqdm

from imageclf.data import ImageDataset
from imageclf.models import Classifier, SavedModel, create_model, preprocessing_for
from imageclf.params import Params


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def extract_features(
    backbone: nn.Module, dataset: Dataset, batch_size: int, device: torch.device, description: str
) -> TensorDataset:
    """Run the frozen backbone once over `dataset`; return its (features, labels) as a TensorDataset."""
    backbone = backbone.eval().to(device, memory_format=torch.channels_last)
    features, labels = [], []
    for images, targets in tqdm(DataLoader(dataset, batch_size=batch_size), desc=description, unit="batch"):
        features.append(backbone(images.to(device, memory_format=torch.channels_last)).float().cpu())
        labels.append(targets)
    return TensorDataset(torch.cat(features), torch.cat(labels))


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float


@dataclass
class FitResult:
    history: list[EpochStats]
    best_epoch: int
    best_state: dict[str, torch.Tensor]

    def summary(self) -> dict:
        """The best and the last epoch's losses and accuracies, for metrics/train.json."""

        def stats(epoch: EpochStats) -> dict:
            return {key: value for key, value in asdict(epoch).items() if key != "epoch"}

        return {
            "best_epoch": self.best_epoch,
            "epochs": len(self.history),
            "best": stats(self.history[self.best_epoch - 1]),
            "last": stats(self.history[-1]),
        }


def run_epoch(
    model: nn.Module, batches: Iterable, device: torch.device, optimizer: torch.optim.Optimizer | None = None
) -> tuple[float, float]:
    """One pass over `batches`: trains when given an optimizer, else only evaluates. Returns (loss, accuracy)."""
    model.train(optimizer is not None)
    total_loss, correct, seen = 0.0, 0, 0
    with torch.set_grad_enabled(optimizer is not None):
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            logits = model(inputs)
            loss = nn.functional.cross_entropy(logits, targets)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            total_loss += loss.item() * len(targets)
            correct += (logits.argmax(dim=1) == targets).sum().item()
            seen += len(targets)
    return total_loss / seen, correct / seen


def fit(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> FitResult:
    """Train `model` with Adam for `epochs`; keep the weights of the epoch with the lowest validation loss."""
    model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    shuffle = torch.Generator().manual_seed(seed)
    train_batches = DataLoader(train_data, batch_size=batch_size, shuffle=True, generator=shuffle)
    val_batches = DataLoader(val_data, batch_size=batch_size)
    history: list[EpochStats] = []
    best_epoch, best_state = 0, {}
    progress = tqdm(range(1, epochs + 1), desc="train", unit="epoch")
    for epoch in progress:
        train_loss, train_accuracy = run_epoch(
            model, tqdm(train_batches, leave=False, delay=1, desc=f"epoch {epoch}"), device, optimizer
        )
        val_loss, val_accuracy = run_epoch(model, val_batches, device)
        history.append(EpochStats(epoch, train_loss, train_accuracy, val_loss, val_accuracy))
        if not best_epoch or val_loss < history[best_epoch - 1].val_loss:
            best_epoch, best_state = epoch, copy.deepcopy(model.state_dict())
        progress.set_postfix(train_loss=f"{train_loss:.3f}", val_loss=f"{val_loss:.3f}", val_acc=f"{val_accuracy:.3f}")
    return FitResult(history, best_epoch, best_state)


def train_classifier(
    model: Classifier,
    train_data: Dataset,
    val_data: Dataset,
    *,
    frozen_backbone: bool,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> FitResult:
    """Train `model` in place and leave it holding its best epoch's weights.

    With a frozen backbone, each image's features are computed once and only the head trains on them,
    so an epoch costs milliseconds instead of a forward pass over every image.
    """
    trainable = model
    if frozen_backbone:
        model.backbone.requires_grad_(False)
        train_data = extract_features(model.backbone, train_data, batch_size, device, "features: train")
        val_data = extract_features(model.backbone, val_data, batch_size, device, "features: val")
        trainable = model.head
    result = fit(trainable, train_data, val_data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    trainable.load_state_dict(result.best_state)
    return result


def train_from_params(params: Params, train_dir: Path, val_dir: Path) -> tuple[SavedModel, FitResult]:
    """Build the model `train.model` in `train.mode` and train it on the two manifest folders."""
    data, train = params.data, params.train
    seed_everything(train.seed)  # before the head is created, so its initial weights are the same every run
    preprocessing = preprocessing_for(train.model, data.image_size)
    model = create_model(train.model, len(data.classes), data.image_size, pretrained=train.mode != "fromzero")
    result = train_classifier(
        model,
        ImageDataset.from_manifest(train_dir, data.classes, preprocessing),
        ImageDataset.from_manifest(val_dir, data.classes, preprocessing),
        frozen_backbone=train.mode == "transfer_learning",
        epochs=train.epochs,
        batch_size=train.batch_size,
        lr=train.lr,
        seed=train.seed,
        device=default_device(),
    )
    return SavedModel(model.cpu().eval(), train.model, data.classes, preprocessing), result
