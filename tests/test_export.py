"""`imageclf export` and prediction with the exported files: PyTorch's probabilities, metadata that other programs
can read, reproducible int8, one-line errors, nothing half-written."""

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import onnxruntime
import openvino
import pytest
import torch

from imageclf.apps.export import CALIBRATION_BATCH_SIZE, calibration_batches, export_command
from imageclf.backbone.frozen import FrozenBackbone
from imageclf.backbone.runtimes import onnx_model, onnxruntime_function
from imageclf.core.config import load
from imageclf.core.errors import UserError
from imageclf.data.datasets import ImageDataset
from imageclf.data.images import open_rgb
from imageclf.data.manifest import Record, content_digest, write_manifest
from imageclf.data.params import DataParams
from imageclf.data.splitting import make_split
from imageclf.inference.photos import predict_files
from imageclf.inference.predictor import load_predictor, torch_predictor
from imageclf.models.architectures import preprocessing_for
from imageclf.models.classifier import create_model
from imageclf.models.model_file import SavedModel, load_model, save_model
from imageclf.models.unknown import REASONS
from imageclf.training.train import train_from_params
from tests.helpers import CLASSES, PROJECT, SampleModel, none_of_the_classes, train_config

IMAGE_SIZE = 128
SAMPLE = sorted((PROJECT / "data/sample").rglob("*.jpg"))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/model.pt of Lite0 with a head trained on the sample, and data/split/train holding the sample."""
    root = tmp_path_factory.mktemp("project")
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", len(CLASSES), IMAGE_SIZE, pretrained=True).eval()
    preprocessing = preprocessing_for("efficientnet_lite0", IMAGE_SIZE)
    with torch.inference_mode():
        batch = np.stack([preprocessing(open_rgb(path, min_side=IMAGE_SIZE)) for path in SAMPLE])
        features = model.backbone(torch.from_numpy(batch))
    labels = torch.tensor([CLASSES.index(path.parent.name) for path in SAMPLE])
    optimizer = torch.optim.Adam(model.head.parameters(), lr=0.01)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model.head(features.clone()), labels).backward()
        optimizer.step()
    save_model(root / "models/model.pt", SavedModel(model, "efficientnet_lite0", CLASSES, preprocessing))
    records = [
        Record(str(path.relative_to(PROJECT / "data/sample")), path.parent.name, content_digest(path), str(path))
        for path in SAMPLE
    ]
    train = root / "data/split/train"
    for record in records:
        (train / record.path).parent.mkdir(parents=True, exist_ok=True)
        (train / record.path).write_bytes(Path(record.source).read_bytes())
    write_manifest(train, records)
    return root / "models/model.pt"


def pytorch_probabilities(model_path: Path) -> np.ndarray:
    saved = load_model(model_path)
    batch = np.stack([saved.preprocessing(open_rgb(path, min_side=IMAGE_SIZE)) for path in SAMPLE])
    with torch.inference_mode():
        return saved.classifier(torch.from_numpy(batch)).softmax(dim=1).numpy()


def exported_probabilities(path: Path) -> np.ndarray:
    predictor = load_predictor(path)
    batch = np.stack([predictor.preprocessing(open_rgb(image, min_side=IMAGE_SIZE)) for image in SAMPLE])
    return predictor.predict(batch).probabilities


def export(model_file: Path, output: Path, format_name: str, precision: str = "fp32", softmax: bool = False) -> Path:
    """int8 calibrates on one batch of the sample's photos picked by the seed, not on all 93 (NNCF's time grows
    with them; `imageclf export` itself takes `CALIBRATION_IMAGES`)."""
    train = model_file.parent.parent / "data/split/train"
    one_batch = functools.partial(calibration_batches, count=CALIBRATION_BATCH_SIZE)
    with mock.patch("imageclf.apps.export.calibration_batches", one_batch):
        export_command(model_file, format_name, precision, softmax, output, train, seed=42)
    return output


def embedded_metadata(path: Path) -> dict:
    """The metadata as another program reads it: with the runtime alone, nothing from this project."""
    if path.suffix == ".onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return json.loads(session.get_modelmeta().custom_metadata_map["imageclf"])
    return json.loads(openvino.Core().read_model(str(path)).get_rt_info(["imageclf"]).astype(str))


@pytest.mark.slow
@pytest.mark.parametrize(("format_name", "suffix", "softmax"), [("onnx", ".onnx", False), ("openvino", ".xml", True)])
def test_fp32_exports_give_pytorchs_probabilities_and_carry_classes_and_preprocessing(
    model_file: Path, tmp_path: Path, format_name: str, suffix: str, softmax: bool
) -> None:
    exported = export(model_file, tmp_path / f"model{suffix}", format_name, softmax=softmax)
    reference = pytorch_probabilities(model_file)
    assert [CLASSES[index] for index in reference.argmax(axis=1)] == [path.parent.name for path in SAMPLE]
    np.testing.assert_allclose(exported_probabilities(exported), reference, atol=1e-3)
    metadata = embedded_metadata(exported)
    assert metadata["classes"] == CLASSES and metadata["image_size"] == IMAGE_SIZE
    preprocessing = preprocessing_for("efficientnet_lite0", IMAGE_SIZE)
    assert (metadata["mean"], metadata["std"]) == (list(preprocessing.mean), list(preprocessing.std))
    assert metadata["softmax"] is softmax


@pytest.mark.slow
@pytest.mark.parametrize(("format_name", "suffix"), [("onnx", ".onnx"), ("openvino", ".xml")])
def test_int8_exports_keep_pytorchs_labels_and_the_same_seed_gives_the_same_file(
    model_file: Path, tmp_path: Path, format_name: str, suffix: str
) -> None:
    first = export(model_file, tmp_path / f"first{suffix}", format_name, "int8")
    again = export(model_file, tmp_path / f"again{suffix}", format_name, "int8")
    weights = (lambda path: path.with_suffix(".bin")) if format_name == "openvino" else (lambda path: path)
    assert weights(first).read_bytes() == weights(again).read_bytes()
    reference, quantized = pytorch_probabilities(model_file), exported_probabilities(first)
    assert not np.allclose(quantized, reference, atol=1e-6), "int8 computes in integers: close, not equal"
    assert (quantized.argmax(axis=1) == reference.argmax(axis=1)).all()
    assert embedded_metadata(first)["precision"] == "int8"


def photo_files(folder: Path) -> list[Path]:
    """The sample's photos and images far from every class (plain colours, noise, text) as files."""
    folder.mkdir(exist_ok=True)
    for name, content in none_of_the_classes().items():
        (folder / name).write_bytes(content)
    return [*SAMPLE, *sorted(folder.glob("*.png"))]


def flagged(predictor_path: Path, photos: list[Path]) -> list[tuple[str, ...]]:
    return [
        prediction.unknown_reason for prediction in predict_files(load_predictor(predictor_path), photos, "none", 32)
    ]


@pytest.mark.slow
def test_the_onnx_export_flags_exactly_the_photos_the_model_file_flags_and_names_its_scores(
    sample_model: SampleModel, tmp_path: Path
) -> None:
    """The default model (its int8 backbone graph): the export flags what NumPy's detector flags on that graph's
    features, as evaluate computes them, on real photos and far images; its metadata names the scores, thresholds
    and reasons."""
    exported = export(sample_model.path, tmp_path / "model.onnx", "onnx", precision="int8", softmax=True)
    photos = photo_files(tmp_path / "far")
    saved = load_model(sample_model.path)
    dataset = ImageDataset(photos, [0] * len(photos), [str(path) for path in photos], saved.preprocessing)
    frozen = FrozenBackbone.of_graph(saved.architecture, saved.backbone_onnx, "int8", saved.preprocessing)
    expected = saved.unknown.flags(frozen.features(dataset, "photos").dataset.tensors[0].numpy()).reasons
    assert flagged(exported, photos) == expected == flagged(sample_model.path, photos)
    # the far images, and few of the sample's photos (thresholds set on 9 val photos: see test_unknown.py)
    assert all(expected[-4:]) and sum(map(bool, expected[:-4])) <= 9
    unknown = embedded_metadata(exported)["unknown"]
    assert unknown["scores"] == ["knn", "imagenet"] and unknown["thresholds"] == saved.unknown.thresholds
    assert unknown["reasons"] == {name: REASONS[name] for name in unknown["scores"]}
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == [
        "probabilities",
        "features",
        "unknown",
        "unknown_flags",
        "unknown_score_knn",
        "unknown_score_imagenet",
    ]


@pytest.fixture(scope="module")
def torch_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/model.pt trained on PyTorch features (no backbone graph to carry): exported through torch, its graph
    given the features as a second output."""
    root = tmp_path_factory.mktemp("torch")
    make_split(PROJECT / "data/sample", CLASSES, 64, 0.2, 0.2, 0, root / "data/split")
    data = dataclasses.replace(load(DataParams, PROJECT / "params.yaml"), image_size=64)
    train = train_config(epochs=20, lr=0.01, backbone_runtime="torch", backbone_precision="fp32")
    saved, _ = train_from_params(data, train, root / "data/split/train", root / "data/split/val")
    save_model(root / "models/model.pt", saved)
    return root / "models/model.pt"


@pytest.mark.slow
@pytest.mark.parametrize(("format_name", "suffix"), [("onnx", ".onnx"), ("openvino", ".xml")])
def test_an_fp32_export_through_torch_flags_exactly_the_photos_pytorch_flags(
    torch_model_file: Path, tmp_path: Path, format_name: str, suffix: str
) -> None:
    exported = export(torch_model_file, tmp_path / f"model{suffix}", format_name)
    photos = photo_files(tmp_path / "far")
    expected = [
        prediction.unknown_reason for prediction in predict_files(torch_predictor(torch_model_file), photos, "none", 32)
    ]
    assert flagged(exported, photos) == expected
    assert all(expected[-4:]), "the far images"
    assert embedded_metadata(exported)["unknown"]["thresholds"] == load_model(torch_model_file).unknown.thresholds


@pytest.mark.slow
def test_an_export_of_a_model_file_without_a_detector_flags_no_photo_and_says_so(
    model_file: Path, tmp_path: Path
) -> None:
    exported = export(model_file, tmp_path / "model.onnx", "onnx")
    assert embedded_metadata(exported)["unknown"] is None
    predictor = load_predictor(exported)
    assert predictor.unknown_scores == () and not any(flagged(exported, SAMPLE[:4]))


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`imageclf ARGS` in a fresh interpreter that reports its imports (-X importtime) on stderr."""
    code = "from imageclf.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, *args], cwd=cwd, capture_output=True, text=True, env=env
    )


def imported(result: subprocess.CompletedProcess) -> set[str]:
    return {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.slow
def test_predict_on_an_export_gives_model_pts_labels_without_importing_torch(model_file: Path, tmp_path: Path) -> None:
    exported = export(model_file, tmp_path / "model.onnx", "onnx")
    labels = {}
    for model in (model_file, exported):
        result = run_cli("predict", str(PROJECT / "data/sample"), "--model", str(model), "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        labels[model] = [row["label"] for row in json.loads(result.stdout)]
    assert labels[exported] == labels[model_file] and len(labels[exported]) == len(SAMPLE)
    assert "torch" not in imported(result)


@pytest.mark.slow
def test_model_pt_is_compiled_once_then_predicted_without_importing_torch(model_file: Path, tmp_path: Path) -> None:
    env = {**os.environ, "IMAGECLF_FEATURE_CACHE": str(tmp_path / "cache")}
    photo = str(SAMPLE[0])
    first = run_cli("predict", photo, "--model", str(model_file), cwd=tmp_path, env=env)
    second = run_cli("predict", photo, "--model", str(model_file), cwd=tmp_path, env=env)
    assert first.returncode == second.returncode == 0, first.stderr[-2000:]
    assert "torch" in imported(first) and "torch" not in imported(second)
    assert first.stdout == second.stdout
    assert len(list((tmp_path / "cache/models").glob("*.onnx"))) == 1


@pytest.mark.slow
def test_a_damaged_or_foreign_export_is_one_line_naming_it(model_file: Path, tmp_path: Path) -> None:
    exported = export(model_file, tmp_path / "model.onnx", "onnx")
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(exported.read_bytes()[: len(exported.read_bytes()) // 2])
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(onnx_model(create_model("efficientnet_lite0", 3, 64, pretrained=False), (1, 3, 64, 64)))
    xml_alone = tmp_path / "alone.xml"
    export(model_file, tmp_path / "whole.xml", "openvino")
    xml_alone.write_bytes((tmp_path / "whole.xml").read_bytes())  # without its .bin
    expected = {
        damaged: "is not a readable ONNX model (",
        foreign: "has no imageclf metadata: it was not written by imageclf export;",
        xml_alone: "is not a readable OpenVINO model with its .bin beside it (",
    }
    for path, message in expected.items():
        result = subprocess.run(
            [sys.executable, "-m", "imageclf", "predict", str(SAMPLE[0]), "--model", str(path)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: '{path}' {message}"), result.stderr


@pytest.mark.parametrize(("module", "suffix"), [("onnxruntime", ".onnx"), ("openvino", ".xml")])
def test_a_runtime_that_is_not_installed_is_one_line_saying_how_to_do_without(
    module: str, suffix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, module, None)  # what `import` sees when the package is not installed
    with pytest.raises(UserError) as error:
        load_predictor(path)
    assert str(error.value) == (
        f"'{path}' needs {module}, which is not installed: pip install {module}, or predict with the model.pt it "
        "was exported from (--model models/model.pt)"
    )


def test_export_to_a_format_whose_runtime_is_not_installed_names_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(UserError) as error:
        export_command(tmp_path / "model.pt", "openvino", "fp32", False, None, tmp_path, 42)
    assert str(error.value) == (
        "imageclf export --format openvino needs openvino, which is not installed: pip install openvino nncf, "
        "or use --format onnx"
    )


@pytest.mark.slow
def test_an_interrupted_export_leaves_nothing_in_the_target_folder(model_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "exports"
    target.mkdir()
    command = [
        sys.executable,
        "-m",
        "imageclf",
        "export",
        "--model",
        str(model_file),
        "--format",
        "onnx",
        "--precision",
        "int8",
        "--calibration",
        str(model_file.parent.parent / "data/split/train"),
        "--seed",
        "1",
        "--output",
        str(target / "model.onnx"),
    ]
    # SIGINT as a terminal sends it, even where this test runs as a background job (which starts ignoring SIGINT)
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not list(target.iterdir()) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [path.name.startswith(".model.onnx.") for path in target.iterdir()] == [True], "the export is staged"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and stderr.strip().endswith("interrupted")
    assert list(target.iterdir()) == []


@pytest.mark.slow
def test_without_onnxruntime_model_pt_is_predicted_on_pytorch(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGECLF_FEATURE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    np.testing.assert_allclose(exported_probabilities(model_file), pytorch_probabilities(model_file), atol=1e-6)
    assert not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def int8_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/model.pt as the train stage writes it: a head trained on ONNX Runtime int8 features of the sample."""
    root = tmp_path_factory.mktemp("int8")
    make_split(PROJECT / "data/sample", CLASSES, 64, 0.2, 0.2, 0, root / "data/split")
    data = dataclasses.replace(load(DataParams, PROJECT / "params.yaml"), image_size=64)
    train = train_config(epochs=5, backbone_runtime="onnxruntime", backbone_precision="int8")
    saved, _ = train_from_params(data, train, root / "data/split/train", root / "data/split/val")
    save_model(root / "models/model.pt", saved)
    return root / "models/model.pt"


@pytest.mark.slow
def test_a_transfer_model_predicts_with_the_backbone_graph_its_head_was_trained_on(int8_model_file: Path) -> None:
    """evaluate, predict and serve load model.pt through `load_predictor`: its probabilities must be the head's on
    the int8 features it was trained on, not those of the fp32 PyTorch backbone."""
    saved = load_model(int8_model_file)
    assert saved.backbone_precision == "int8" and saved.backbone_onnx is not None
    val = ImageDataset.from_manifest(int8_model_file.parent.parent / "data/split/val", CLASSES, saved.preprocessing)
    batch = np.stack([val[index][0].numpy() for index in range(len(val))])
    with torch.inference_mode():
        fp32 = saved.classifier(torch.from_numpy(batch)).softmax(dim=1).numpy()
        int8_features = torch.from_numpy(onnxruntime_function(saved.backbone_onnx, 1)(batch))
        trained_on = saved.classifier.head(int8_features).softmax(dim=1).numpy()
    predicted = load_predictor(int8_model_file).predict(batch).probabilities
    np.testing.assert_allclose(predicted, trained_on, atol=1e-5)
    assert np.abs(predicted - fp32).max() > 100 * np.abs(predicted - trained_on).max()


@pytest.mark.slow
def test_export_defaults_to_the_carried_graph_and_needs_no_calibration_images(
    int8_model_file: Path, tmp_path: Path
) -> None:
    output = tmp_path / "model.onnx"
    export_command(int8_model_file, "onnx", None, True, output, tmp_path / "no-such-split", seed=None)
    assert embedded_metadata(output)["precision"] == "int8"
    images = sorted((int8_model_file.parent.parent / "data/split/test").rglob("*.jpg"))
    exported, model_pt = load_predictor(output), load_predictor(int8_model_file)
    batch = np.stack([exported.preprocessing(open_rgb(path, min_side=64)) for path in images])
    np.testing.assert_array_equal(exported.predict(batch).probabilities, model_pt.predict(batch).probabilities)
