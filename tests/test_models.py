"""The model registry, the offline EfficientNet-Lite weights and the model file."""

import copy
import functools
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from torch import nn

from imageclf.core.errors import UserError
from imageclf.data.datasets import ImageDataset
from imageclf.data.images import open_rgb
from imageclf.data.splitting import make_split
from imageclf.inference.photos import labelled_result, predict_files
from imageclf.inference.predictor import load_predictor
from imageclf.models.architectures import MODELS, PackagedWeights, preprocessing_for
from imageclf.models.classifier import create_model
from imageclf.models.model_file import SavedModel, load_model, save_model
from imageclf.models.unknown import UnknownDetector
from imageclf.training.modes import MODES
from tests.helpers import CLASSES, PROJECT, make_image_folder, train_classifier, train_config

IMAGENET_CLASSES = {"cat": range(281, 286), "dog": range(151, 269), "horse": range(339, 340)}


def test_original_is_the_study_groups_cnn() -> None:
    model = create_model("original", num_classes=3, image_size=224, pretrained=False)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [conv.out_channels for conv in convs] == [16, 32, 64, 64, 64, 64]
    assert all(conv.kernel_size == (3, 3) for conv in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    dense = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(8 * 8 * 64, 516), (516, 256), (256, 3)]
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 3)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["efficientnet_lite0", "tf_efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
)
def test_lite_models_load_the_packaged_imagenet_weights_and_recognise_the_sample(name: str) -> None:
    """Mapped by position, the weights must give ImageNet predictions that match the sample's labels, at each
    model's native input, with symmetric padding (the default) as with TensorFlow's."""
    spec = MODELS[name]
    packaged = spec.imagenet_weights()
    model = create_model(name, num_classes=3, image_size=spec.input_size, pretrained=True)
    assert torch.equal(model.backbone.conv_stem.weight, packaged["_conv_stem.weight"])
    imagenet = timm.create_model(name, num_classes=1000)
    imagenet.load_state_dict(
        {
            **model.backbone.state_dict(),
            "classifier.weight": packaged["_fc.weight"],
            "classifier.bias": packaged["_fc.bias"],
        }
    )
    dataset = ImageDataset.from_folder(PROJECT / "data/sample", CLASSES, preprocessing_for(name, spec.input_size))
    picks = [
        index for label in CLASSES for index in range(len(dataset)) if dataset.labels[index] == CLASSES.index(label)
    ][::10]
    with torch.inference_mode():
        images = torch.stack([dataset[index][0] for index in picks])
        top = imagenet.eval()(images).argmax(dim=1).tolist()
    right = sum(top[i] in IMAGENET_CLASSES[CLASSES[dataset.labels[index]]] for i, index in enumerate(picks))
    assert right >= 0.8 * len(picks)


def test_unknown_model_and_missing_weights_are_named() -> None:
    with pytest.raises(UserError, match=r"model 'resnet9' is unknown; choices: original, resnet18, resnet34"):
        create_model("resnet9", 3, 160, pretrained=False)
    with pytest.raises(UserError, match=r"'original' has no pretrained weights: use train.mode: fromzero"):
        create_model("original", 3, 160, pretrained=True)
    with pytest.raises(UserError, match=r"data\.image_size 64 is too small for train.model 'original'"):
        create_model("original", 3, 64, pretrained=False)


def test_model_file_round_trip_and_refusals(tmp_path: Path) -> None:
    model = create_model("efficientnet_lite0", 3, 64, pretrained=True).eval()
    preprocessing = preprocessing_for("efficientnet_lite0", 64)
    save_model(tmp_path / "model.pt", SavedModel(model, "efficientnet_lite0", CLASSES, preprocessing))
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    assert raw["classes"] == CLASSES and raw["mean"] == [0.5, 0.5, 0.5]
    loaded = load_model(tmp_path / "model.pt")
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(loaded.classifier(images), model(images))
    assert loaded.preprocessing == preprocessing and loaded.classes == CLASSES

    with pytest.raises(UserError, match=f"model file '{tmp_path / 'none.pt'}' not found"):
        load_model(tmp_path / "none.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(UserError, match="is not a model file this project can load"):
        load_model(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="is not a model file written by this project"):
        load_model(tmp_path / "other.pt")


def test_the_detector_round_trips_and_an_older_file_without_it_flags_no_photo(tmp_path: Path) -> None:
    model = create_model("efficientnet_lite0", 3, 32, pretrained=False).eval()
    preprocessing = preprocessing_for("efficientnet_lite0", 32)
    images = sorted(make_image_folder(tmp_path / "photos", per_class=6).rglob("*.jpg"))
    Image.new("RGB", (32, 32), (128, 128, 128)).save(tmp_path / "grey.png")
    photos = [*images, tmp_path / "grey.png"]
    with torch.inference_mode():
        batch = torch.from_numpy(np.stack([preprocessing(open_rgb(path)) for path in photos]))
        features = model.backbone(batch).numpy()
    labels = np.array([CLASSES.index(path.parent.name) for path in images])
    detector = UnknownDetector.fit(features[:-1:2], labels[::2], CLASSES, features[1:-1:2])
    save_model(tmp_path / "model.pt", SavedModel(model, "efficientnet_lite0", CLASSES, preprocessing, unknown=detector))
    loaded = load_model(tmp_path / "model.pt").unknown
    assert loaded.thresholds == detector.thresholds and np.array_equal(loaded.bank, detector.bank)
    older = torch.load(tmp_path / "model.pt", weights_only=True)
    del older["unknown"]  # as the train stage wrote it before the detector existed, with a threshold of its own
    torch.save(older | {"unknown_threshold": 0.999}, tmp_path / "older.pt")
    assert load_model(tmp_path / "older.pt").unknown is None

    predictor = load_predictor(tmp_path / "model.pt")  # its compiled ONNX graph, the detector's nodes included
    assert predictor.unknown_scores == ("knn",) and predictor.unknown_thresholds == detector.thresholds
    predictions = list(predict_files(predictor, photos, "none", 4))
    assert [prediction.unknown_reason for prediction in predictions] == detector.flags(features).reasons
    older_predictor = load_predictor(tmp_path / "older.pt")
    assert older_predictor.unknown_scores == ()
    for prediction in predict_files(older_predictor, photos, "none", 4):
        assert not labelled_result(prediction, tmp_path, CLASSES).unknown and prediction.unknown_scores == {}


def whole_architecture_weights(name: str, image_size: int, path: Path) -> dict[str, torch.Tensor]:
    """A state dict as users bring one: torchvision's whole model (classifier included), or a model.pt of ours."""
    torch.manual_seed(1)
    if name == "original":
        model = create_model("original", 3, image_size, pretrained=False)
        save_model(path, SavedModel(model, name, CLASSES, preprocessing_for(name, image_size)))
        return {key.removeprefix("backbone."): value for key, value in model.state_dict().items()}
    state_dict = torchvision.models.get_model(name, weights=None).state_dict()
    torch.save(state_dict, path)
    return state_dict


@pytest.fixture(scope="module")
def split_folders(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """A split of a few generated photos per class at a given size (its val folder, 3 photos, is a tiny data set)."""

    @functools.cache
    def split(image_size: int) -> Path:
        root = tmp_path_factory.mktemp(f"split{image_size}")
        make_split(make_image_folder(root / "raw", per_class=6), CLASSES, image_size, 0.2, 0.2, 0, root / "split")
        return root / "split"

    return split


def test_the_model_file_does_not_depend_on_the_weights_memory_layout(tmp_path: Path) -> None:
    """torch.save records strides, and a channels-last 1x1 kernel stays channels-last through `.contiguous()`."""
    model = create_model("efficientnet_lite0", 3, 32, pretrained=True).eval()
    saved = SavedModel(model, "efficientnet_lite0", CLASSES, preprocessing_for("efficientnet_lite0", 32))
    save_model(tmp_path / "standard.pt", saved)
    model.to(memory_format=torch.channels_last)  # as the backbone runs when it computes features
    save_model(tmp_path / "channels_last.pt", saved)
    assert (tmp_path / "channels_last.pt").read_bytes() == (tmp_path / "standard.pt").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_a_step_in_every_mode(
    name: str, tmp_path: Path, split_folders: Callable[[int], Path]
) -> None:
    """The backbone stays as it was in transfer learning and changes in the other modes; the head always learns.

    torchvision's ImageNet weights cannot be downloaded here, so the pretrained modes use `train.weights`
    (a state dict this test saves); EfficientNet-Lite uses the weights its package ships.
    """
    size = max(32, MODELS[name].min_image_size)
    weights = None if isinstance(MODELS[name].imagenet_weights, PackagedWeights) else tmp_path / "weights.pt"
    saved = whole_architecture_weights(name, size, weights) if weights else {}
    images = ImageDataset.from_manifest(split_folders(size) / "val", CLASSES, preprocessing_for(name, size))
    for mode, spec in MODES.items():
        pretrained = spec.pretrained
        torch.manual_seed(0)
        model = create_model(name, 3, size, pretrained=pretrained, weights=weights if pretrained else None)
        backbone = model.backbone.state_dict()
        if pretrained and weights:
            assert all(torch.equal(backbone[key], saved[key]) for key in backbone), "train.weights not loaded"
        before = copy.deepcopy(model.state_dict())
        # fp32 features: int8 ONNX Runtime cannot run tf_efficientnet_lite0 at 32 px (a QLinearConv shape error).
        # Fine-tuning keeps the backbone's step only if it lowers the val loss below the head's: a smaller step does.
        # float32: train.amp would time each network in both precisions first (tests/test_precision.py), which cost
        # this test more than half its time.
        lr = 0.0001 if spec.fine_tunes else 0.01
        config = train_config(
            model=name,
            mode=mode,
            epochs=1,
            backbone_epochs=1,
            batch_size=len(images),
            lr=lr,
            backbone_precision="fp32",
            amp=False,
        )
        train_classifier(model, images, images, config)
        changed = {key for key, value in model.state_dict().items() if not torch.equal(value, before[key])}
        assert {"head.1.weight", "head.1.bias"} <= changed, mode
        assert any(key.startswith("backbone.") for key in changed) == spec.trains_backbone, mode


def test_weights_that_do_not_fit_the_model_are_refused_in_one_line(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pt")
    with pytest.raises(UserError, match=r"train.weights '.*resnet18.pt' do not fit train.model 'resnet34': "):
        create_model("resnet34", 3, 64, pretrained=True, weights=tmp_path / "resnet18.pt")
    (tmp_path / "notes.pt").write_text("not weights")
    with pytest.raises(UserError, match=r"train.weights '.*notes.pt' is not a state dict torch can load safely"):
        create_model("resnet18", 3, 64, pretrained=True, weights=tmp_path / "notes.pt")


def test_without_internet_torchvision_weights_fail_at_once_naming_the_choices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
        pytest.skip("download.pytorch.org is reachable: the offline error cannot happen here")
    except OSError:
        pass
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty weights cache
    with pytest.raises(UserError) as error:
        create_model("resnet50", 3, 64, pretrained=True)
    message = str(error.value)
    assert "\n" not in message and "train.model 'resnet50' needs its ImageNet weights" in message
    assert "efficientnet_lite0" in message and "fromzero" in message and "train.weights" in message
