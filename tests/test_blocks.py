"""Partial fine-tuning (`train.trainable_blocks`): a backbone as a chain of blocks, its first blocks frozen and
stored, its last ones trained with the head after the head alone."""

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from imageclf.core.config import load
from imageclf.core.errors import UserError
from imageclf.core.store import read_store
from imageclf.data.datasets import ImageDataset
from imageclf.data.params import DataParams
from imageclf.data.splitting import make_split
from imageclf.models.architectures import MODELS
from imageclf.models.blocks import block_count
from imageclf.models.classifier import create_model, split_backbone
from imageclf.training.params import TrainParams
from imageclf.training.train import train_from_params
from tests.helpers import CLASSES, PROJECT, make_image_folder, train_config

CHAINED = ["efficientnet_lite0", "resnet18", "efficientnet_b0"]  # one of each family: timm, torchvision ResNet and
# torchvision EfficientNet


@pytest.mark.parametrize("name", CHAINED)
def test_the_chain_of_blocks_is_the_backbone_and_shares_its_weights(name: str) -> None:
    torch.manual_seed(0)
    backbone = create_model(name, 3, 64, pretrained=False).backbone.eval()
    images = torch.randn(2, 3, 64, 64)
    count = block_count(MODELS[name].chain(backbone))
    for trainable in (0, 1, count):
        first, last = split_backbone(name, backbone, trainable)
        with torch.inference_mode():
            torch.testing.assert_close(last(first(images)), backbone(images), rtol=0, atol=0)
        owned = {id(parameter) for parameter in backbone.parameters()}
        split = [*first.parameters(), *last.parameters()]
        assert {id(parameter) for parameter in split} == owned and len(split) == len(owned)
    blocks = {"efficientnet_lite0": 16, "resnet18": 8, "efficientnet_b0": 16}[name]
    assert count == blocks


def test_too_many_blocks_or_a_mode_without_them_is_one_line(tmp_path: Path) -> None:
    backbone = create_model("resnet18", 3, 64, pretrained=False).backbone
    with pytest.raises(UserError, match=r"^train.trainable_blocks 9: train.model 'resnet18' has 8 blocks; use 0 "):
        split_backbone("resnet18", backbone, 9)
    with pytest.raises(UserError, match=r"train.model 'original' has no pretrained blocks"):
        split_backbone("original", create_model("original", 3, 112, pretrained=False).backbone, 1)
    values = yaml.safe_load((PROJECT / "params.yaml").read_text())
    path = tmp_path / "params.yaml"
    for mode, blocks, message in (
        ("fromzero", 1, "only train.mode transfer_learning trains part of a backbone"),
        ("transfer_learning", -1, "it must be 0 \\(the head only\\) or more"),
    ):
        values["train"] |= {"mode": mode, "trainable_blocks": blocks}
        path.write_text(yaml.safe_dump(values))
        with pytest.raises(UserError, match=rf"'train.trainable_blocks' is {blocks}; {message}"):
            load(TrainParams, path)


def run_partial(tmp_path: Path, **changes: object):
    split = tmp_path / "split"
    if not split.is_dir():
        make_split(make_image_folder(tmp_path / "raw"), CLASSES, 64, 0.1, 0.1, 0, split)
    data = dataclasses.replace(load(DataParams, PROJECT / "params.yaml"), image_size=64)
    train = train_config(**{"trainable_blocks": 2, "backbone_epochs": 2, "epochs": 1, "batch_size": 8, **changes})
    return train_from_params(data, train, split / "train", split / "val")


def test_the_last_blocks_train_after_the_head_on_stored_activations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head trains alone first (its epochs lead the history), then the last 2 blocks and the tail with it; the
    blocks before them keep their ImageNet weights. Their activations are stored once: a second run computes
    none. The model file's whole classifier gives what the trained chain gave."""
    monkeypatch.setenv("IMAGECLF_FEATURE_CACHE", str(tmp_path / "cache"))
    pretrained = create_model("efficientnet_lite0", 3, 64, pretrained=True).backbone.state_dict()
    saved, result = run_partial(tmp_path, lr=0.001)
    assert len(result.history) == 1 + 2 and result.best_epoch > 1, "the blocks' epochs follow the head's, and won"
    _, last = split_backbone("efficientnet_lite0", copy.deepcopy(saved.classifier.backbone), 2)
    trained = saved.classifier.backbone.state_dict()
    changed = {name for name in pretrained if not torch.equal(pretrained[name], trained[name])}
    last_names = {f"blocks.6.0.{name}" for name, _ in saved.classifier.backbone.blocks[6][0].named_parameters()}
    assert last_names <= changed and any(name.startswith("conv_head") for name in changed)
    assert all(name.startswith(("blocks.5.3.", "blocks.6.", "conv_head", "bn2")) for name in changed), changed
    assert not any(name.endswith(("running_mean", "running_var")) for name in changed), "train.freeze_batchnorm"
    assert saved.unknown.imagenet is None, "the features changed: no ImageNet classifier reads them"

    stores = list((tmp_path / "cache").glob("*.pt"))
    assert len(stores) == 1 and len(read_store(stores[0])) == 24 + 3  # train and val images, once each
    images = ImageDataset.from_manifest(tmp_path / "split/val", CLASSES, saved.preprocessing)
    batch = torch.stack([images[index][0] for index in range(len(images))])
    stored = torch.stack([read_store(stores[0])[digest] for digest in images.digests])
    classifier = saved.classifier.eval()
    with torch.inference_mode():
        torch.testing.assert_close(classifier.head(last.eval()(stored)), classifier(batch), rtol=1e-4, atol=1e-4)

    modified = stores[0].stat().st_mtime_ns
    again, _ = run_partial(tmp_path, lr=0.001)
    assert stores[0].stat().st_mtime_ns == modified, "every activation came from the store"
    assert all(
        torch.equal(tensor, again.classifier.state_dict()[name])
        for name, tensor in saved.classifier.state_dict().items()
    )


@pytest.mark.slow
def test_blocks_that_do_not_lower_the_val_loss_are_left_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A learning rate that wrecks the blocks: the head-only epoch of lowest val loss is kept, blocks untouched."""
    monkeypatch.setenv("IMAGECLF_FEATURE_CACHE", str(tmp_path / "cache"))
    pretrained = create_model("efficientnet_lite0", 3, 64, pretrained=True).backbone.state_dict()
    saved, result = run_partial(tmp_path, lr=0.01, backbone_lr_scale=1000.0, epochs=3)
    assert len(result.history) == 3 + 2 and result.best_epoch <= 3
    trained = saved.classifier.backbone.state_dict()
    assert all(torch.equal(tensor, trained[name]) for name, tensor in pretrained.items())


@pytest.mark.slow
def test_batchnorm_statistics_follow_the_data_when_not_frozen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGECLF_FEATURE_CACHE", str(tmp_path / "cache"))
    pretrained = create_model("efficientnet_lite0", 3, 64, pretrained=True).backbone.state_dict()
    saved, result = run_partial(tmp_path, lr=0.001, freeze_batchnorm=False)
    assert result.best_epoch > 1, "the blocks' epochs won, so their weights are the ones kept"
    trained = saved.classifier.backbone.state_dict()
    assert not torch.equal(pretrained["bn2.running_mean"], trained["bn2.running_mean"])
