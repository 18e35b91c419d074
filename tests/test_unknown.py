"""`models.unknown`: the scores that flag a photo of none of the classes, their val thresholds, the state a model file
keeps, and the ONNX nodes that flag the same photos."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper

from imageclf.backbone.runtimes import openvino_compiled
from imageclf.data.images import Preprocessing, open_rgb
from imageclf.data.manifest import read_manifest
from imageclf.inference.photos import predict_files
from imageclf.inference.predictor import load_predictor
from imageclf.models.architectures import model_spec
from imageclf.models.model_file import read_model_file
from imageclf.models.unknown import (
    REASONS,
    SYNSET_MIN_PROBABILITY,
    UnknownDetector,
    calibrated_threshold,
    imagenet_classifier,
    learned_synsets,
    onnx_unknown,
    softmax,
)
from tests.helpers import PROJECT, SampleModel, none_of_the_classes

CLASSES = ["cat", "dog", "horse"]
DIMENSIONS = 64


def class_features(rng: np.random.Generator, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Features as a pooled backbone gives them (non-negative), one cluster per class around a fixed centre."""
    centres = np.random.default_rng(0).uniform(0, 1, (3, DIMENSIONS)) ** 4 * 4
    labels = np.repeat(np.arange(3), per_class)
    features = np.abs(centres[labels] + rng.normal(0, 0.3, (len(labels), DIMENSIONS)))
    return features.astype(np.float32), labels


def imagenet_head(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 1,000-way classifier on the features, as a pretrained backbone ships it."""
    return rng.normal(0, 0.3, (1000, DIMENSIONS)).astype(np.float32), rng.normal(0, 0.1, 1000).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    train, train_labels = class_features(rng, 200)
    val, _ = class_features(rng, 100)
    test, _ = class_features(rng, 100)
    far = rng.uniform(0, 1, (50, DIMENSIONS)).astype(np.float32) ** 4 * 4  # other centres: none of the classes
    return {"train": train, "labels": train_labels, "val": val, "test": test, "far": far}


@pytest.fixture(scope="module")
def detector(data: dict[str, np.ndarray]) -> UnknownDetector:
    head = imagenet_head(np.random.default_rng(2))
    return UnknownDetector.fit(data["train"], data["labels"], CLASSES, data["val"], imagenet=head)


def test_features_far_from_every_class_are_flagged_by_the_distance_and_the_classes_are_not(
    data: dict[str, np.ndarray], detector: UnknownDetector
) -> None:
    far = detector.flags(data["far"])
    assert far.unknown.all()
    assert all("knn" in reason for reason in far.reasons)
    assert detector.flags(data["test"]).unknown.mean() <= 0.02


def test_the_thresholds_flag_at_most_one_percent_of_val_together(
    data: dict[str, np.ndarray], detector: UnknownDetector
) -> None:
    flags = detector.flags(data["val"])
    assert 0 < flags.unknown.sum() <= 3, "300 val photos: at most 3, and the budget is used"
    scores = detector.scores(data["val"])
    assert set(scores) == {"knn", "imagenet"} == set(detector.thresholds)
    for name, values in scores.items():
        assert np.sum(values < detector.thresholds[name]) == 1, f"{name}: half the budget, floor(0.5 % of 300)"


def test_a_threshold_keeps_the_val_photo_that_sets_it_with_a_margin() -> None:
    scores = np.array([0.1, 0.5, 0.6, 0.7] + [0.8] * 96)
    threshold = calibrated_threshold(scores, 0.01)
    assert 0.5 - 1e-4 < threshold < 0.5, "one of 100 under it, the next one safely above"
    assert calibrated_threshold(scores, 0.0) < 0.1


def test_the_synsets_are_learned_from_the_training_photos_or_given_by_hand(data: dict[str, np.ndarray]) -> None:
    weight, bias = imagenet_head(np.random.default_rng(2))
    weight[7] = np.where(class_features(np.random.default_rng(0), 1)[0][0] > 1, 2.0, -2.0)  # synset 7 looks like cat
    learned = UnknownDetector.fit(data["train"], data["labels"], CLASSES, data["val"], imagenet=(weight, bias))
    assert 7 in learned.imagenet.class_synsets["cat"]
    assert all(7 not in learned.imagenet.class_synsets[name] for name in ("dog", "horse"))
    given = {"cat": [281, 282], "dog": [207], "horse": [339]}
    by_hand = UnknownDetector.fit(data["train"], data["labels"], CLASSES, data["val"], (weight, bias), given)
    assert by_hand.imagenet.class_synsets == given
    assert by_hand.imagenet.synsets.tolist() == [207, 281, 282, 339]


def test_a_class_whose_photos_look_like_no_synset_keeps_the_one_they_look_most_like() -> None:
    """Plain-coloured toy photos spread ImageNet's probability thin: no synset reaches the bar, and a class without
    a synset would leave the ImageNet score without anything to measure."""
    probabilities = softmax(np.random.default_rng(0).normal(0, 0.1, (6, 1000)))
    labels = np.array([0, 0, 0, 1, 1, 2])
    assert probabilities.max() < SYNSET_MIN_PROBABILITY
    synsets = learned_synsets(probabilities, labels, CLASSES, SYNSET_MIN_PROBABILITY)
    assert synsets == {
        name: [int(probabilities[labels == label].mean(axis=0).argmax())] for label, name in enumerate(CLASSES)
    }


def test_without_an_imagenet_classifier_it_uses_the_distance_alone_and_says_so(data: dict[str, np.ndarray]) -> None:
    alone = UnknownDetector.fit(data["train"], data["labels"], CLASSES, data["val"], imagenet=None)
    assert alone.score_names == ["knn"] and set(alone.thresholds) == {"knn"}
    assert "feature distance only" in alone.note
    assert alone.flags(data["far"]).unknown.all()
    assert alone.flags(data["val"]).unknown.sum() == 3, "the whole 1 % for the one score"
    assert set(REASONS) >= {"knn", "imagenet"}


def test_the_imagenet_classifier_is_found_in_pretrained_state_dicts() -> None:
    weight, bias = torch.randn(1000, 32), torch.randn(1000)
    lite = {"_conv_head.weight": torch.randn(32, 16, 1, 1), "_fc.weight": weight, "_fc.bias": bias}
    found = imagenet_classifier(lite)
    assert found is not None and np.array_equal(found[0], weight.numpy()) and np.array_equal(found[1], bias.numpy())
    assert imagenet_classifier({"classifier.1.weight": weight, "classifier.1.bias": bias}) is not None
    assert imagenet_classifier({"head.1.weight": torch.randn(3, 32), "head.1.bias": torch.randn(3)}) is None


def test_the_state_survives_a_weights_only_torch_file(data: dict[str, np.ndarray], detector: UnknownDetector) -> None:
    state = {
        name: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
        for name, value in detector.state().items()
    }
    buffer = io.BytesIO()
    torch.save({"unknown": state}, buffer)
    buffer.seek(0)
    restored = UnknownDetector.from_state(torch.load(buffer, weights_only=True)["unknown"])
    assert restored.thresholds == detector.thresholds
    assert restored.imagenet.class_synsets == detector.imagenet.class_synsets
    for name in ("val", "test", "far"):
        assert np.array_equal(restored.flags(data[name]).unknown, detector.flags(data[name]).unknown)
    assert detector.bank.dtype == np.float16
    assert detector.nbytes() == 2 * (600 * DIMENSIONS + 1000 * DIMENSIONS + 1000)


def test_a_smaller_bank_keeps_that_many_training_photos(data: dict[str, np.ndarray]) -> None:
    small = UnknownDetector.fit(data["train"], data["labels"], CLASSES, data["val"], bank_size=100)
    assert small.bank.shape == (100, DIMENSIONS)
    assert small.flags(data["far"]).unknown.all()


def features_graph(dimensions: int) -> onnx.ModelProto:
    """A graph whose output `features` is its input: what a backbone graph ends in."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["images"], ["features"])],
        "backbone",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", dimensions])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", dimensions])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def run_onnx(model: onnx.ModelProto, inputs: np.ndarray) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": inputs}), strict=True))


@pytest.mark.parametrize("with_imagenet", [True, False])
def test_the_onnx_nodes_flag_exactly_the_photos_numpy_flags(data: dict[str, np.ndarray], with_imagenet: bool) -> None:
    head = imagenet_head(np.random.default_rng(2)) if with_imagenet else None
    detector = UnknownDetector.fit(data["train"], data["labels"], CLASSES, data["val"], imagenet=head)
    graph = onnx_unknown(features_graph(DIMENSIONS), detector)
    blank = np.zeros((1, DIMENSIONS), np.float32)  # all-zero features, which a ReLU backbone can give
    photos = np.concatenate([data["val"], data["test"], data["far"], blank])
    outputs = run_onnx(graph, photos)
    flags = detector.flags(photos)
    assert "knn" in flags.reasons[-1], "no similarity to any training photo"
    assert np.array_equal(outputs["features"], photos), "the graph's own output is kept"
    assert np.array_equal(outputs["unknown"], flags.unknown)
    expected = [[name in reason for name in detector.score_names] for reason in flags.reasons]
    assert np.array_equal(outputs["unknown_flags"], np.array(expected))
    for name, values in detector.scores(photos).items():
        np.testing.assert_allclose(outputs[f"unknown_score_{name}"], values, atol=1e-5)
    assert 0 < flags.unknown.sum() < len(photos)


def test_the_module_runs_without_torch() -> None:
    code = (
        "import sys, numpy as np; from imageclf.models import unknown;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT, check=True)


@pytest.mark.slow
def test_a_real_backbone_graph_with_the_nodes_flags_exactly_what_numpy_flags_on_its_features(
    sample_model: SampleModel,
) -> None:
    """The int8 Lite0 graph a trained model file carries, with the detector appended: the same photos flagged as
    the NumPy detector flags on that graph's features (the sample's photos, a grey square, noise)."""
    saved = read_model_file(sample_model.path)
    backbone = onnx.load_from_string(saved["backbone_onnx"].numpy().tobytes())
    preprocessing = Preprocessing(saved["image_size"], tuple(saved["mean"]), tuple(saved["std"]))

    def images(sources: list) -> np.ndarray:
        return np.stack([preprocessing(open_rgb(source, min_side=preprocessing.image_size)) for source in sources])

    def split(name: str) -> tuple[list[Path], np.ndarray]:
        records = read_manifest(sample_model.split / name)
        paths = [sample_model.split / name / record.path for record in records]
        return paths, np.array([CLASSES.index(record.label) for record in records])

    features_of = onnxruntime.InferenceSession(backbone.SerializeToString(), providers=["CPUExecutionProvider"])
    (train, labels), (val, _), (test, _) = split("train"), split("val"), split("test")
    train_features, val_features = (features_of.run(None, {"images": images(paths)})[0] for paths in (train, val))
    weights = model_spec("efficientnet_lite0").imagenet_weights()
    detector = UnknownDetector.fit(train_features, labels, CLASSES, val_features, imagenet_classifier(weights))

    photos = images([*val, *test, *none_of_the_classes().values()])
    outputs = run_onnx(onnx_unknown(backbone, detector), photos)
    flags = detector.flags(outputs["features"])
    assert np.array_equal(outputs["unknown"], flags.unknown)
    assert flags.unknown[-4:].all(), "the plain squares, the noise and the text"
    assert not flags.unknown[: len(val) + len(test)].all()


def test_openvino_converts_the_nodes_and_flags_the_same_photos(data: dict[str, np.ndarray]) -> None:
    openvino = pytest.importorskip("openvino")
    head = imagenet_head(np.random.default_rng(2))
    detector = UnknownDetector.fit(data["train"], data["labels"], CLASSES, data["val"], imagenet=head)
    graph = onnx_unknown(features_graph(DIMENSIONS), detector)
    # compiled as the predictor compiles it: float32 (OpenVINO's default on a CPU with bfloat16 is bfloat16)
    compiled = openvino_compiled(openvino.convert_model(io.BytesIO(graph.SerializeToString())), 1)
    photos = np.concatenate([data["val"], data["test"], data["far"]])
    flagged = compiled(photos)[compiled.output("unknown")]
    assert np.array_equal(flagged, detector.flags(photos).unknown)


@pytest.mark.slow
def test_a_trained_model_flags_far_images_by_the_feature_distance_and_not_the_photos_of_its_classes(
    sample_model: SampleModel,
) -> None:
    """The model file trained on the sample, as `predict` runs it: noise, text and plain colours are far from every
    training photo; the sample's photos of the classes are not, but for a few: this model's thresholds are set by the
    lowest of only 9 val photos, and which sample photos fall under them moves with the CPU's int8 arithmetic."""
    predictor = load_predictor(sample_model.path)
    far = list(predict_files(predictor, list(none_of_the_classes().values()), "none", 8))
    assert all("knn" in prediction.unknown_reason for prediction in far)
    sample = sorted((PROJECT / "data/sample").rglob("*.jpg"))
    flagged = [
        prediction.path for prediction in predict_files(predictor, sample, "none", 32) if prediction.unknown_reason
    ]
    assert len(sample) == 93 and len(flagged) <= 9, flagged
