"""The backbone runtimes: ONNX Runtime and OpenVINO compute PyTorch's features, and int8 keeps its labels."""

import sys

import numpy as np
import pytest
import torch

from imageclf.backbone.runtimes import BACKBONE_RUNTIMES, compile_backbone
from imageclf.core.errors import UserError
from imageclf.data.datasets import ImageDataset
from imageclf.models.architectures import packaged_efficientnet_lite0_weights, preprocessing_for
from imageclf.models.classifier import create_model
from tests.helpers import CLASSES, PROJECT

pytestmark = pytest.mark.slow  # each test compiles a backbone on ONNX Runtime or OpenVINO

FAST_RUNTIMES = [name for name in BACKBONE_RUNTIMES if name != "torch"]
IMAGENET_CLASSES = {"cat": range(281, 286), "dog": range(151, 269), "horse": range(339, 340)}


def sample_batches(image_size: int, count: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A batch of `count` sample photos (every class), the same count of others, and batches of the rest."""
    preprocessing = preprocessing_for("efficientnet_lite0", image_size)
    dataset = ImageDataset.from_folder(PROJECT / "data/sample", CLASSES, preprocessing)
    images = np.stack([dataset[index][0].numpy() for index in range(len(dataset))])
    order = np.random.default_rng(0).permutation(len(images))
    batches = [images[order[start : start + count]] for start in range(0, len(images) - count + 1, count)]
    return batches[0], batches[1], batches[2:]


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return create_model("efficientnet_lite0", 3, 224, pretrained=True).backbone


@pytest.mark.parametrize("runtime", FAST_RUNTIMES)
def test_fp32_features_are_pytorchs(runtime: str, lite0: torch.nn.Module) -> None:
    batch, _, _ = sample_batches(224, 16)
    reference = compile_backbone("torch", lite0, batch.shape, "fp32")(batch)
    features = compile_backbone(runtime, lite0, batch.shape, "fp32")(batch)
    assert features.shape == reference.shape == (16, 1280)
    np.testing.assert_allclose(features, reference, rtol=1e-4, atol=1e-4)


def imagenet_labels(features: np.ndarray) -> list[str]:
    """Cat, dog or horse: the group of ImageNet classes the packaged 1000-class head scores highest."""
    weights = packaged_efficientnet_lite0_weights()
    logits = features @ weights["_fc.weight"].numpy().T + weights["_fc.bias"].numpy()
    return [max(IMAGENET_CLASSES, key=lambda label: row[list(IMAGENET_CLASSES[label])].max()) for row in logits]


@pytest.mark.parametrize("runtime", FAST_RUNTIMES)
def test_int8_features_give_the_fp32_labels_on_the_sample(runtime: str, lite0: torch.nn.Module) -> None:
    batch, _, calibration = sample_batches(224, 16)
    fp32 = compile_backbone("torch", lite0, batch.shape, "fp32")(batch)
    int8 = compile_backbone(runtime, lite0, batch.shape, "int8", calibration)(batch)
    assert not np.allclose(int8, fp32, atol=1e-3), "int8 computes in integers: close, not equal"
    differ = [i for i, (a, b) in enumerate(zip(imagenet_labels(int8), imagenet_labels(fp32), strict=True)) if a != b]
    assert len(differ) <= 1, f"int8 and fp32 disagree on images {differ} of 16 (the bar: at most one photo)"


@pytest.mark.parametrize("runtime", ["onnxruntime"])
def test_int8_calibration_is_reproducible_and_depends_on_the_calibration_images(runtime: str) -> None:
    """The same calibration batches give the same quantized model, so a rerun gives byte-identical features.

    ONNX Runtime only, the default: OpenVINO's int8 reproducibility is checked by the warm-against-cold cache test
    (test_features.py) and the int8 export test (test_export.py), each of which compiles it twice."""
    backbone = create_model("efficientnet_lite0", 3, 64, pretrained=True).backbone
    batch, other, calibration = sample_batches(64, 8)

    def quantized(calibration_batches: list[np.ndarray]) -> np.ndarray:
        return compile_backbone(runtime, backbone, batch.shape, "int8", calibration_batches)(batch)

    first = quantized(calibration[:2])
    assert first.tobytes() == quantized(calibration[:2]).tobytes()
    assert first.tobytes() != quantized([other, *calibration[2:4]]).tobytes()


@pytest.mark.parametrize(("runtime", "module"), [("openvino", "nncf"), ("onnxruntime", "onnxruntime")])
def test_a_runtime_that_is_not_installed_is_one_line_naming_the_pip_command(
    runtime: str, module: str, lite0: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what `import` sees when the package is not installed
    with pytest.raises(UserError) as error:
        compile_backbone(runtime, lite0, (1, 3, 32, 32), "fp32")
    packages = " ".join(BACKBONE_RUNTIMES[runtime].packages)
    assert str(error.value) == (
        f"train.backbone_runtime '{runtime}' needs {module}, which is not installed: "
        f"pip install {packages}, or set train.backbone_runtime: torch"
    )
