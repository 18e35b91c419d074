"""params.yaml is checked before any work: the shipped file loads, each mistake is named in one line, and each stage
checks the sections it uses."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imageclf.core.config import SECTIONS, load
from imageclf.core.errors import UserError
from imageclf.data.params import AugmentParams, DataParams, SplitParams
from imageclf.evaluation.params import EvaluateParams
from imageclf.training.params import TrainParams
from tests.helpers import PROJECT

SECTIONS_BY_NAME = {
    "data": DataParams,
    "split": SplitParams,
    "augment": AugmentParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
}


def load_params(path: Path) -> None:
    """Every section, as the four stages together load them."""
    for schema in SECTIONS_BY_NAME.values():
        load(schema, path)


def test_the_shipped_params_load() -> None:
    assert list(SECTIONS_BY_NAME) == list(SECTIONS) == [schema.SECTION for schema in SECTIONS_BY_NAME.values()]
    assert load(DataParams, PROJECT / "params.yaml").classes == ["cat", "dog", "horse"]
    train = load(TrainParams, PROJECT / "params.yaml")
    assert train.model == "efficientnet_lite0" and train.mode == "transfer_learning"


def test_a_stage_checks_only_its_own_sections(tmp_path: Path) -> None:
    """split reads data and split: a mistake in train is the train stage's to report, so split and augment do not
    depend on the train section's rules (nor on the code behind them)."""
    path = write_params(tmp_path, "train", "lr", "fast")
    assert load(SplitParams, path).seed == 42 and load(DataParams, path).image_size == 256
    with pytest.raises(UserError, match=re.escape("'train.lr' must be float")):
        load(TrainParams, path)


def test_an_unknown_section_is_named_by_every_stage(tmp_path: Path) -> None:
    values = yaml.safe_load((PROJECT / "params.yaml").read_text())
    values["trian"] = {"lr": 0.1}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(UserError, match=re.escape("unknown section 'trian' (allowed: data, split, augment, train, ")):
        load(SplitParams, path)


def write_params(tmp_path: Path, section: str, key: str, value: object) -> Path:
    values = yaml.safe_load((PROJECT / "params.yaml").read_text())
    if value is None:
        del values[section][key]
    else:
        values[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "learning_rte", 0.1, "unknown key 'train.learning_rte'"),
        ("train", "lr", "fast", "'train.lr' must be float, got 'fast'"),
        ("train", "lr", 0, "'train.lr' is 0.0; it must be greater than 0"),
        ("train", "epochs", True, "'train.epochs' must be int, got True"),
        ("train", "mode", "fine_tunning", "'train.mode' is 'fine_tunning'; allowed: fromzero, transfer_learning, fine"),
        ("split", "test", 0.95, "split.val + split.test must stay below 1"),
        ("data", "classes", ["cat"], "'data.classes' is ['cat']; it needs at least two distinct class names"),
        ("data", "image_size", None, "missing key 'data.image_size'"),
        ("augment", "transforms", [{"HorizontalFlip": {"p": 0.5}, "ToGray": {}}], "augment.transforms[0]"),
        (
            "train",
            "backbone_runtime",
            "tensorrt",
            "'train.backbone_runtime' is 'tensorrt'; allowed: torch, onnxruntime",
        ),
        (
            "train",
            "backbone_precision",
            "int4",
            "'train.backbone_precision' is 'int4'; allowed with train.backbone_run",
        ),
    ],
)
def test_a_bad_value_is_named(tmp_path: Path, section: str, key: str, value: object, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        load_params(write_params(tmp_path, section, key, value))


@pytest.mark.slow
def test_a_stage_with_bad_params_prints_one_line_and_fails(tmp_path: Path) -> None:
    write_params(tmp_path, "train", "learning_rte", 0.1)
    result = subprocess.run(
        [sys.executable, str(PROJECT / "stages/train.py"), "a", "b", "c", "d", "e", "f", "g", "h"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: unknown key 'train.learning_rte' (allowed in train: model, mode, weights, epochs, "
        "batch_size, seed, optimizer, lr, momentum, nesterov, weight_decay, backbone_lr_scale, "
        "trainable_blocks, backbone_epochs, freeze_batchnorm, dropout, label_smoothing, class_weights, sampler, "
        "schedule, early_stopping, convergence, checkpoint_every, device, amp, backbone_runtime, backbone_precision)"
    ]


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("split", "sed", 1, "unknown key 'split.sed' (allowed in split: val, test, seed, train_per_class)"),
        ("data", "image_size", "224", "'data.image_size' must be int, got '224'"),
        ("data", "raw_dir", ["data/sample"], "'data.raw_dir' must be str, got ['data/sample']"),
        ("data", "classes", "cat, dog", "'data.classes' must be a list of str, got 'cat, dog'"),
        ("data", "classes", ["cat", "cat"], "'data.classes' is ['cat', 'cat']; it needs at least two distinct"),
        ("split", "val", 0, "'split.val' is 0.0; it must be between 0 and 1"),
        ("split", "test", 0.9, "'split.test' is 0.9; split.val + split.test must stay below 1 to leave training data"),
        ("augment", "copies", -1, "'augment.copies' is -1; it must be 0 or more"),
        (
            "augment",
            "online",
            {"crop_scale": 1.5, "flip": 0.5, "color_jitter": 0.2},
            "'augment.online.crop_scale' is 1.5; it must be in (0, 1]",
        ),
        (
            "augment",
            "online",
            {"crop_scale": 0.35, "flip": 0.5, "color_jitter": 0.2, "rotate": 15},
            "unknown key 'augment.online.rotate' (allowed in augment.online: crop_scale, flip, color_jitter)",
        ),
    ],
)
def test_a_bad_data_split_or_augment_value_is_named(
    tmp_path: Path, section: str, key: str, value: object, message: str
) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        load_params(write_params(tmp_path, section, key, value))


@pytest.mark.slow
def test_split_checks_params_before_touching_any_file(tmp_path: Path) -> None:
    write_params(tmp_path, "data", "raw_dri", "photos")
    result = subprocess.run(
        [sys.executable, str(PROJECT / "stages/split.py"), "split", "split/rejected.csv", "split.json", "details.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: unknown key 'data.raw_dri' (allowed in data: raw_dir, classes, image_size)"
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]


def test_int8_needs_a_runtime_that_quantizes(tmp_path: Path) -> None:
    path = write_params(tmp_path, "train", "backbone_runtime", "torch")
    values = yaml.safe_load(path.read_text())
    values["train"]["backbone_precision"] = "int8"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(
        UserError,
        match=re.escape("'train.backbone_precision' is 'int8'; allowed with train.backbone_runtime torch: fp32"),
    ):
        load_params(path)
    values["train"]["backbone_runtime"] = "openvino"
    path.write_text(yaml.safe_dump(values))
    assert load(TrainParams, path).backbone_precision == "int8"
