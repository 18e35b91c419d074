"""The feature cache: each image's frozen-backbone features are computed once, and never served stale."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imageclf.backbone.calibration import CALIBRATION_IMAGES, calibration_indices
from imageclf.backbone.frozen import FrozenBackbone
from imageclf.backbone.runtimes import BACKBONE_RUNTIMES
from imageclf.core.cache import CACHE_ENVIRONMENT_VARIABLE
from imageclf.core.device import CPU
from imageclf.core.errors import UserError
from imageclf.data.datasets import ImageDataset
from imageclf.data.params import DataParams
from imageclf.data.splitting import make_split
from imageclf.models.architectures import preprocessing_for
from imageclf.models.classifier import create_model
from imageclf.training.setup import feed, set_up
from tests.helpers import CLASSES, make_image_folder, train_config


def torch_backbone(backbone: torch.nn.Module, size: int = 32) -> FrozenBackbone:
    return FrozenBackbone(
        "efficientnet_lite0", backbone, "torch", "fp32", preprocessing_for("efficientnet_lite0", size)
    )


def test_features_are_computed_once_and_recomputed_exactly_where_an_input_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENVIRONMENT_VARIABLE, str(tmp_path / "cache"))
    make_split(make_image_folder(tmp_path / "raw", per_class=4), CLASSES, 32, 0.25, 0.25, 0, tmp_path / "split")

    def train_split(size: int = 32) -> ImageDataset:  # read anew, as each run of the train stage reads it
        preprocessing = preprocessing_for("efficientnet_lite0", size)
        return ImageDataset.from_manifest(tmp_path / "split/train", CLASSES, preprocessing)

    dataset = train_split()
    model = create_model("efficientnet_lite0", 3, 32, pretrained=True)

    def features(backbone: torch.nn.Module = model.backbone, data: ImageDataset | None = None) -> tuple:
        data = data or train_split()
        result = torch_backbone(backbone, data.preprocess.image_size).features(data, "train")
        return (result.reused, result.computed), result.dataset.tensors[0]

    counts, first = features()
    assert counts == (0, len(dataset))
    assert torch.equal(first, torch_backbone(model.backbone).extract(dataset, "direct"))
    counts, again = features()
    assert counts == (len(dataset), 0) and torch.equal(again, first)

    changed = dataset.paths[0]
    Image.fromarray(np.full((37, 37, 3), 128, dtype=np.uint8)).save(changed, quality=90)
    counts, after_edit = features()
    assert counts == (len(dataset) - 1, 1)
    assert not torch.equal(after_edit[0], first[0]) and torch.equal(after_edit[1:], first[1:])

    assert features(data=train_split(48))[0] == (0, len(dataset))

    torch.manual_seed(0)
    other_weights = create_model("efficientnet_lite0", 3, 32, pretrained=False).backbone
    counts, other = features(backbone=other_weights)
    assert counts == (0, len(dataset)) and not torch.allclose(other, after_edit)
    assert features()[0] == (len(dataset), 0), "the first backbone's features are still there"


@pytest.mark.parametrize(
    ("runtime", "precision", "threads"),
    [
        ("torch", "fp32", 1),
        pytest.param("torch", "fp32", 2, marks=pytest.mark.slow),
        pytest.param("onnxruntime", "int8", 2, marks=pytest.mark.slow),  # the default
        pytest.param("openvino", "int8", 2, marks=pytest.mark.slow),
    ],
)
def test_a_warm_cache_gives_the_features_a_cold_one_does_and_leaves_the_backbone_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime: str, precision: str, threads: int
) -> None:
    """Features must not depend on which other images were missing with them (conv kernels block by batch size)."""
    make_split(make_image_folder(tmp_path / "raw", per_class=10), CLASSES, 32, 0.25, 0.25, 0, tmp_path / "split")
    dataset = ImageDataset.from_manifest(tmp_path / "split/train", CLASSES, preprocessing_for("efficientnet_lite0", 32))
    backbone = create_model("efficientnet_lite0", 3, 32, pretrained=True).backbone
    strides = {name: tensor.stride() for name, tensor in backbone.state_dict().items()}

    def features(data: ImageDataset):  # a new extractor each time, as each run of the train stage makes one
        frozen = FrozenBackbone.for_training("efficientnet_lite0", backbone, runtime, precision, CPU, dataset, seed=0)
        return frozen.features(data, "train")

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        monkeypatch.setenv(CACHE_ENVIRONMENT_VARIABLE, str(tmp_path / "cold"))
        cold = features(dataset).dataset.tensors[0]
        assert {name: tensor.stride() for name, tensor in backbone.state_dict().items()} == strides
        monkeypatch.setenv(CACHE_ENVIRONMENT_VARIABLE, str(tmp_path / "warm"))
        # an earlier run on some of the images, as before adding images to a class: each image then comes from
        # a batch of other company than in the cold run (and each run compiles, int8 calibrates, once more)
        features(ImageDataset(dataset.paths[:3], dataset.labels[:3], dataset.sources[:3], dataset.preprocess))
        warm = features(dataset)
    finally:
        torch.set_num_threads(previous_threads)
    assert (warm.reused, warm.computed) == (3, len(dataset) - 3)
    assert torch.equal(warm.dataset.tensors[0], cold)


def test_the_cache_keeps_each_runtime_precision_and_calibration_apart(tmp_path: Path) -> None:
    make_split(make_image_folder(tmp_path / "raw", per_class=4), CLASSES, 32, 0.25, 0.25, 0, tmp_path / "split")
    dataset = ImageDataset.from_manifest(tmp_path / "split/train", CLASSES, preprocessing_for("efficientnet_lite0", 32))
    backbone = create_model("efficientnet_lite0", 3, 32, pretrained=True).backbone

    def key(runtime: str, precision: str, seed: int = 0, count: int = 2) -> str:
        frozen = FrozenBackbone.for_training(
            "efficientnet_lite0", backbone, runtime, precision, CPU, dataset, seed, count
        )
        return frozen.store_key()

    keys = [key(runtime, precision) for runtime, spec in BACKBONE_RUNTIMES.items() for precision in spec.precisions]
    assert len(keys) == 5 == len(set(keys))
    assert key("openvino", "fp32", seed=1) == key("openvino", "fp32"), "fp32 is not calibrated: no seed in its key"
    calibrated = {key("openvino", "int8", seed) for seed in range(4)}
    assert len(calibrated) > 1, "int8 features depend on the calibration images, so the key does"
    assert key("openvino", "int8", count=3) != key("openvino", "int8", count=2)


def test_calibration_images_depend_on_the_seed_and_the_images_not_their_order() -> None:
    digests = [f"{index:064x}" for index in range(100)]
    chosen = calibration_indices(digests, seed=7, count=10)
    assert len(set(chosen)) == 10 and chosen == calibration_indices(digests, seed=7, count=10)
    assert chosen != calibration_indices(digests, seed=8, count=10)
    reversed_chosen = calibration_indices(digests[::-1], seed=7, count=10)
    assert sorted(digests[index] for index in chosen) == sorted(digests[::-1][index] for index in reversed_chosen)
    assert calibration_indices(digests + digests[:5], seed=7, count=200) == calibration_indices(digests, 7, 200), (
        "a photo stored twice is calibrated on once"
    )


def test_a_graph_the_runtime_cannot_run_is_one_line_saying_how_to_do_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """int8 ONNX Runtime fails on TensorFlow-padded Lite0 at 32 px (a QLinearConv shape error): one line, not a
    traceback from inside the runtime."""
    monkeypatch.setenv(CACHE_ENVIRONMENT_VARIABLE, str(tmp_path / "cache"))
    make_split(make_image_folder(tmp_path / "raw", per_class=4), CLASSES, 32, 0.25, 0.25, 0, tmp_path / "split")
    preprocessing = preprocessing_for("tf_efficientnet_lite0", 32)
    dataset = ImageDataset.from_manifest(tmp_path / "split/train", CLASSES, preprocessing)
    backbone = create_model("tf_efficientnet_lite0", 3, 32, pretrained=True).backbone
    frozen = FrozenBackbone.for_training("tf_efficientnet_lite0", backbone, "onnxruntime", "int8", CPU, dataset, seed=0)
    with pytest.raises(UserError) as raised:
        frozen.features(dataset, "train")
    message = str(raised.value)
    assert "\n" not in message and message.startswith(
        "train.backbone_runtime onnxruntime (int8) cannot run train.model 'tf_efficientnet_lite0' at 32 px ("
    )
    assert message.endswith(
        "set train.backbone_precision: fp32, a larger data.image_size, or train.backbone_runtime: torch"
    )


@pytest.mark.slow
def test_the_train_stage_calibrates_int8_on_images_picked_by_train_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frozen backbone the train stage's set-up feeds a head from calibrates on the training images that
    `train.seed` picks: another seed, other images (of 72, 64 calibrate), so another int8 graph."""
    monkeypatch.setenv(CACHE_ENVIRONMENT_VARIABLE, str(tmp_path / "cache"))
    raw = make_image_folder(tmp_path / "raw", per_class=30)
    make_split(raw, CLASSES, 32, 0.1, 0.1, 0, tmp_path / "split")
    data = DataParams(str(raw), CLASSES, 32)
    chosen = {}
    for seed in (0, 1):
        train = train_config(seed=seed, backbone_runtime="onnxruntime", backbone_precision="int8")
        run = set_up(data, train, tmp_path / "split/train", tmp_path / "split/val")
        frozen = feed(run).frozen
        assert frozen.calibration.indices == calibration_indices(run.train_data.digests, seed)
        chosen[seed] = {run.train_data.digests[index] for index in frozen.calibration.indices}
    assert len(chosen[0]) == len(chosen[1]) == CALIBRATION_IMAGES < len(run.train_data)
    assert chosen[0] != chosen[1]
