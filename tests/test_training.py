"""The training loop: frozen-backbone transfer learning, training from zero, best epoch, determinism."""

import copy
from pathlib import Path

import torch

from imageclf.data import ImageDataset, make_split
from imageclf.models import create_model, preprocessing_for
from imageclf.training import train_classifier
from tests.helpers import CLASSES, make_image_folder


def datasets(tmp_path: Path, model: str, image_size: int) -> tuple[ImageDataset, ImageDataset]:
    make_split(make_image_folder(tmp_path / "raw"), CLASSES, image_size, 0.1, 0.1, 0, tmp_path / "split")
    preprocessing = preprocessing_for(model, image_size)
    return (
        ImageDataset.from_manifest(tmp_path / "split/train", CLASSES, preprocessing),
        ImageDataset.from_manifest(tmp_path / "split/val", CLASSES, preprocessing),
    )


def train(model: torch.nn.Module, train_data: ImageDataset, val_data: ImageDataset, frozen: bool, epochs: int = 3):
    return train_classifier(
        model,
        train_data,
        val_data,
        frozen_backbone=frozen,
        epochs=epochs,
        batch_size=8,
        lr=0.01,
        seed=0,
        device=torch.device("cpu"),
    )


def test_transfer_learning_trains_the_head_only_and_keeps_the_best_epoch(tmp_path: Path) -> None:
    train_data, val_data = datasets(tmp_path, "efficientnet_lite0", 32)
    model = create_model("efficientnet_lite0", 3, 32, pretrained=True)
    backbone_before = copy.deepcopy(model.backbone.state_dict())
    head_before = copy.deepcopy(model.head.state_dict())
    result = train(model, train_data, val_data, frozen=True, epochs=4)

    assert all(torch.equal(tensor, backbone_before[name]) for name, tensor in model.backbone.state_dict().items())
    assert not torch.equal(model.head.weight, head_before["weight"])
    val_losses = [epoch.val_loss for epoch in result.history]
    assert result.best_epoch == val_losses.index(min(val_losses)) + 1
    assert all(torch.equal(model.head.state_dict()[name], tensor) for name, tensor in result.best_state.items())
    summary = result.summary()
    assert summary["epochs"] == 4 and summary["best"]["val_loss"] == min(val_losses)
    assert summary["last"]["val_loss"] == val_losses[-1]


def test_training_from_zero_changes_every_layer_and_is_deterministic(tmp_path: Path) -> None:
    train_data, val_data = datasets(tmp_path, "original", 112)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = create_model("original", 3, 112, pretrained=False)
        before = copy.deepcopy(model.state_dict())
        result = train(model, train_data, val_data, frozen=False, epochs=2)
        changed = [name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])]
        runs.append((result.history, changed))
    assert runs[0][0] == runs[1][0]
    assert len(runs[0][1]) == len(before)
