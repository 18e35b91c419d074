"""The feature cache: each image's frozen-backbone features are computed once, and never served stale."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imageclf.features import CACHE_ENVIRONMENT_VARIABLE, EXTRACTION_BATCH_SIZE, cached_features, extract_features
from imageclf.manifest import ImageDataset
from imageclf.models import create_model, preprocessing_for
from imageclf.splitting import make_split
from tests.helpers import CLASSES, make_image_folder

CPU = torch.device("cpu")


def test_features_are_computed_once_and_recomputed_exactly_where_an_input_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENVIRONMENT_VARIABLE, str(tmp_path / "cache"))
    make_split(make_image_folder(tmp_path / "raw", per_class=4), CLASSES, 32, 0.25, 0.25, 0, tmp_path / "split")
    dataset = ImageDataset.from_manifest(tmp_path / "split/train", CLASSES, preprocessing_for("efficientnet_lite0", 32))
    model = create_model("efficientnet_lite0", 3, 32, pretrained=True)

    def features(backbone: torch.nn.Module = model.backbone, data: ImageDataset = dataset) -> tuple:
        result = cached_features("efficientnet_lite0", backbone, data, CPU, "train")
        return (result.reused, result.computed), result.dataset.tensors[0]

    counts, first = features()
    assert counts == (0, len(dataset))
    assert torch.equal(first, extract_features(model.backbone, dataset, EXTRACTION_BATCH_SIZE, CPU, "direct"))
    counts, again = features()
    assert counts == (len(dataset), 0) and torch.equal(again, first)

    changed = dataset.paths[0]
    Image.fromarray(np.full((37, 37, 3), 128, dtype=np.uint8)).save(changed, quality=90)
    counts, after_edit = features()
    assert counts == (len(dataset) - 1, 1)
    assert not torch.equal(after_edit[0], first[0]) and torch.equal(after_edit[1:], first[1:])

    larger = ImageDataset.from_manifest(tmp_path / "split/train", CLASSES, preprocessing_for("efficientnet_lite0", 48))
    assert features(data=larger)[0] == (0, len(dataset))

    torch.manual_seed(0)
    other_weights = create_model("efficientnet_lite0", 3, 32, pretrained=False).backbone
    counts, other = features(backbone=other_weights)
    assert counts == (0, len(dataset)) and not torch.allclose(other, after_edit)
    assert features()[0] == (len(dataset), 0), "the first backbone's features are still there"


@pytest.mark.parametrize("threads", [1, 2])
def test_a_warm_cache_gives_the_features_a_cold_one_does_and_leaves_the_backbone_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """Features must not depend on which other images were missing with them (conv kernels block by batch size)."""
    make_split(make_image_folder(tmp_path / "raw", per_class=10), CLASSES, 32, 0.25, 0.25, 0, tmp_path / "split")
    dataset = ImageDataset.from_manifest(tmp_path / "split/train", CLASSES, preprocessing_for("efficientnet_lite0", 32))
    backbone = create_model("efficientnet_lite0", 3, 32, pretrained=True).backbone
    strides = {name: tensor.stride() for name, tensor in backbone.state_dict().items()}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        monkeypatch.setenv(CACHE_ENVIRONMENT_VARIABLE, str(tmp_path / "cold"))
        cold = cached_features("efficientnet_lite0", backbone, dataset, CPU, "train").dataset.tensors[0]
        assert {name: tensor.stride() for name, tensor in backbone.state_dict().items()} == strides
        monkeypatch.setenv(CACHE_ENVIRONMENT_VARIABLE, str(tmp_path / "warm"))
        for count in (1, 3):  # earlier runs on some of the images, as after adding images to a class
            part = ImageDataset(
                dataset.paths[:count], dataset.labels[:count], dataset.sources[:count], dataset.preprocess
            )
            cached_features("efficientnet_lite0", backbone, part, CPU, "train")
        warm = cached_features("efficientnet_lite0", backbone, dataset, CPU, "train")
    finally:
        torch.set_num_threads(previous_threads)
    assert (warm.reused, warm.computed) == (3, len(dataset) - 3)
    assert torch.equal(warm.dataset.tensors[0], cold)
