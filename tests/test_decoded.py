"""Modes that train convolutions on images: images decoded once into the decoded-image store, online augmentation
drawn afresh per epoch and reproducible per seed, and fine-tuning that starts from a head fitted on the features."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import functional

from imageclf.core.config import load
from imageclf.core.store import store_path
from imageclf.data.datasets import ImageDataset
from imageclf.data.decoded import DecodedImages, decoded_pixels, store_key
from imageclf.data.online_augmentation import OnlineAugmentation, image_generator
from imageclf.data.params import AugmentParams, DataParams, OnlineAugmentParams
from imageclf.data.splitting import make_split
from imageclf.models.architectures import preprocessing_for
from imageclf.training.train import train_from_params
from tests.helpers import CLASSES, PROJECT, make_image_folder, train_config

SHIPPED_ONLINE = load(AugmentParams, PROJECT / "params.yaml").online


def split_folder(tmp_path: Path, size: int) -> Path:
    split = tmp_path / "split"
    if not split.is_dir():
        make_split(make_image_folder(tmp_path / "raw"), CLASSES, size, 0.1, 0.1, 0, split)
    return split


def test_online_augmentation_differs_between_epochs_and_repeats_for_the_same_seed(tmp_path: Path) -> None:
    preprocessing = preprocessing_for("resnet18", 64)
    dataset = ImageDataset.from_manifest(split_folder(tmp_path, 64) / "train", CLASSES, preprocessing)
    augmentation = OnlineAugmentation(SHIPPED_ONLINE)
    index = torch.arange(len(dataset))
    (pixels,) = decoded_pixels([dataset])

    def epoch_batch(seed: int, epoch: int) -> torch.Tensor:
        images = DecodedImages(pixels, dataset.labels, preprocessing, augmentation, seed)
        images.set_epoch(epoch)
        return images.batch(index)[0]

    first = epoch_batch(seed=0, epoch=1)
    assert torch.equal(first, epoch_batch(seed=0, epoch=1)), "the same seed and epoch give the same bytes"
    assert not torch.equal(first, epoch_batch(seed=0, epoch=2)), "each epoch draws afresh"
    assert not torch.equal(first, epoch_batch(seed=1, epoch=1))
    changed = (first != epoch_batch(seed=0, epoch=2)).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.9, "nearly every image is drawn differently"

    plain = DecodedImages(pixels, dataset.labels, preprocessing)
    expected = torch.stack([dataset[position][0] for position in range(len(dataset))])
    assert torch.equal(plain.batch(index)[0], expected), "unaugmented, the store gives what decoding gives"
    assert torch.equal(plain.batch(index)[1], torch.tensor(dataset.labels))
    off = OnlineAugmentParams(crop_scale=1.0, flip=0.0, color_jitter=0.0)
    unchanged = DecodedImages(pixels, dataset.labels, preprocessing, OnlineAugmentation(off))
    assert torch.equal(unchanged.batch(index)[0], expected)


def test_a_batch_is_augmented_as_torchvisions_transforms_augment_each_image_alone() -> None:
    """The batch's jitter (a colour matrix per image) gives what torchvision's resized crop, flip and brightness,
    contrast and saturation give image by image, in that order, for each image's own draws. Pixels in [96, 160]:
    the shipped factors (0.8 to 1.2) keep every step inside [0, 255], where torchvision clamps after each."""
    augmentation = OnlineAugmentation(SHIPPED_ONLINE)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(96, 161, (12, 3, 48, 40), dtype=torch.uint8, generator=generator)
    draws = [augmentation.draw([48, 40], image_generator(7, 3, position)) for position in range(len(pixels))]
    assert len({draw.jitter for draw in draws}) == len(draws) and {draw.flip for draw in draws} == {False, True}

    expected = []
    for image, draw in zip(pixels, draws, strict=True):
        if draw.box is not None:
            image = functional.resized_crop(image, *draw.box, size=[48, 40], antialias=True)
        image = image.float() / 255
        if draw.flip:
            image = functional.horizontal_flip(image)
        brightness, contrast, saturation = draw.jitter
        image = functional.adjust_brightness(image, brightness)
        image = functional.adjust_contrast(image, contrast)
        expected.append(functional.adjust_saturation(image, saturation) * 255)
    generators = [image_generator(7, 3, position) for position in range(len(pixels))]
    torch.testing.assert_close(augmentation(pixels, generators), torch.stack(expected), rtol=0, atol=1e-3)
    full_range = torch.randint(0, 256, (12, 3, 48, 40), dtype=torch.uint8, generator=generator)
    augmented = augmentation(full_range, [image_generator(7, 3, position) for position in range(len(pixels))])
    assert augmented.min() == 0 and augmented.max() == 255, "clamped to the pixels' range"


def test_no_epoch_decodes_a_jpeg_and_a_damaged_store_is_decoded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A from-zero run of three augmented epochs decodes each image once; the next run decodes none, and trains the
    same weights; a damaged store is rebuilt, never trusted."""
    monkeypatch.setenv("IMAGECLF_FEATURE_CACHE", str(tmp_path / "cache"))
    split = split_folder(tmp_path, 32)
    decoded: list[Path] = []
    image = ImageDataset.image

    def counting_image(self: ImageDataset, index: int):
        decoded.append(self.paths[index])
        return image(self, index)

    monkeypatch.setattr(ImageDataset, "image", counting_image)
    data = dataclasses.replace(load(DataParams, PROJECT / "params.yaml"), image_size=32)
    train = train_config(model="resnet18", mode="fromzero", epochs=3, batch_size=8, lr=0.01)

    def run() -> dict[str, torch.Tensor]:
        saved, result = train_from_params(data, train, split / "train", split / "val", SHIPPED_ONLINE)
        assert len(result.history) == 3
        return saved.classifier.state_dict()

    first = run()
    assert sorted(decoded) == sorted((split / "train").rglob("*.jpg")) + sorted((split / "val").rglob("*.jpg"))
    decoded.clear()
    again = run()
    assert decoded == [], "every image came from the store"
    assert all(torch.equal(tensor, again[name]) for name, tensor in first.items())

    store_path(store_key(32)).write_bytes(b"not a store")
    rebuilt = run()
    assert len(decoded) == 24 + 3
    assert all(torch.equal(tensor, rebuilt[name]) for name, tensor in first.items())


def test_fine_tuning_starts_the_backbone_from_a_head_fitted_on_its_features(tmp_path: Path) -> None:
    """The head trains alone first, on the pretrained backbone's features; the whole network's first epoch starts
    from it, so its training loss is already far below a new head's (ln 3)."""
    split = split_folder(tmp_path, 64)
    data = dataclasses.replace(load(DataParams, PROJECT / "params.yaml"), image_size=64)
    train = train_config(mode="fine_tuning", epochs=40, backbone_epochs=2, batch_size=8, lr=0.001)
    train = dataclasses.replace(
        train, backbone_lr_scale=0.01, early_stopping=dataclasses.replace(train.early_stopping, patience=0)
    )
    _, result = train_from_params(data, train, split / "train", split / "val", SHIPPED_ONLINE)
    assert len(result.history) == 40 + 2
    probe, backbone = result.history[39], result.history[40]
    assert probe.train_loss < 0.3 * math.log(3)
    assert backbone.train_loss < 0.5 * math.log(3), "the backbone's first epoch starts from the probe's head"
