"""The one place that reads `params.yaml` and checks it: unknown keys, wrong types and bad values fail early."""

from collections.abc import Collection
from dataclasses import dataclass, fields
from pathlib import Path
from types import UnionType
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from imageclf.backbone.runtimes import BACKBONE_RUNTIMES
from imageclf.core.errors import UserError
from imageclf.data.views import TTA
from imageclf.models.architectures import MODELS
from imageclf.training.optim import OPTIMIZERS, SCHEDULES

PARAMS_FILE = Path("params.yaml")
TRAIN_MODES = ("fromzero", "transfer_learning", "fine_tuning")
MONITORS = ("val_loss", "val_accuracy")
CLASS_WEIGHTS = ("none", "balanced")
SAMPLERS = ("shuffle", "weighted")
DEVICES = ("auto", "cpu", "cuda", "mps")
WEIGHT_DECAY_AUTO = "auto"  # train.weight_decay chosen on the val split (training.fit_choosing_weight_decay)


@dataclass(frozen=True)
class DataParams:
    raw_dir: str
    classes: list[str]
    image_size: int


@dataclass(frozen=True)
class SplitParams:
    val: float
    test: float
    seed: int


@dataclass(frozen=True)
class AugmentParams:
    copies: int
    seed: int
    transforms: list[dict]


@dataclass(frozen=True)
class ScheduleParams:
    name: str
    step_size: int
    gamma: float
    patience: int


@dataclass(frozen=True)
class EarlyStoppingParams:
    monitor: str
    patience: int
    min_delta: float


@dataclass(frozen=True)
class ConvergenceParams:
    patience: int
    min_delta: float


@dataclass(frozen=True)
class TrainParams:
    model: str
    mode: str
    weights: str
    epochs: int
    batch_size: int
    seed: int
    optimizer: str
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float | str  # a number, or WEIGHT_DECAY_AUTO
    backbone_lr_scale: float
    warmup_epochs: int
    dropout: float
    label_smoothing: float
    class_weights: str
    sampler: str
    schedule: ScheduleParams
    early_stopping: EarlyStoppingParams
    convergence: ConvergenceParams
    checkpoint_every: int
    device: str
    amp: bool
    backbone_runtime: str
    backbone_precision: str


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int
    tta: str
    gallery_size: int
    test_images: str


@dataclass(frozen=True)
class Params:
    data: DataParams
    split: SplitParams
    augment: AugmentParams
    train: TrainParams
    evaluate: EvaluateParams


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and check `path`; raise UserError naming the first bad key."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run from the project root, where params.yaml is") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    params = _build(Params, raw, prefix="", path=path)
    _check_values(params, path)
    return params


def _build(cls: type, raw: Any, prefix: str, path: Path) -> Any:
    """Build dataclass `cls` from the mapping `raw`, checking key names and value types."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise UserError(f"{path}: {where} must be a mapping of keys, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    names = [field.name for field in fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise UserError(f"{path}: unknown key '{prefix}{unknown[0]}' (allowed in {where}: {', '.join(names)})")
    values = {}
    for name in names:
        key = prefix + name
        if name not in raw:
            raise UserError(f"{path}: missing key '{key}'")
        hint = hints[name]
        if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
            values[name] = _build(hint, raw[name], prefix=f"{key}.", path=path)
        else:
            values[name] = _checked_type(raw[name], hint, key, path)
    return cls(**values)


def _checked_type(value: Any, hint: Any, key: str, path: Path) -> Any:
    origin = get_origin(hint)
    if origin is UnionType:
        options = get_args(hint)
        for option in options:
            try:
                return _checked_type(value, option, key, path)
            except UserError:
                continue
        names = " or ".join(option.__name__ for option in options)
        raise UserError(f"{path}: '{key}' must be {names}, got {value!r}")
    if origin is list:
        (item_type,) = get_args(hint)
        if not isinstance(value, list) or not all(isinstance(item, item_type) for item in value):
            raise UserError(f"{path}: '{key}' must be a list of {item_type.__name__}, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise UserError(f"{path}: '{key}' must be {hint.__name__}, got {value!r}")
    return value


def _require(condition: bool, path: Path, key: str, value: Any, allowed: str) -> None:
    if not condition:
        raise UserError(f"{path}: '{key}' is {value!r}; {allowed}")


def _check_values(params: Params, path: Path) -> None:
    data, split, augment, train = params.data, params.split, params.augment, params.train
    classes = data.classes
    _require(
        len(classes) >= 2 and len(set(classes)) == len(classes),
        path,
        "data.classes",
        classes,
        "it needs at least two distinct class names",
    )
    _require(data.image_size >= 32, path, "data.image_size", data.image_size, "it must be at least 32 (pixels)")
    _require(0 < split.val < 1, path, "split.val", split.val, "it must be between 0 and 1")
    _require(0 < split.test < 1, path, "split.test", split.test, "it must be between 0 and 1")
    _require(
        split.val + split.test < 1,
        path,
        "split.test",
        split.test,
        f"split.val + split.test must stay below 1 to leave training data (split.val is {split.val})",
    )
    _require(augment.copies >= 0, path, "augment.copies", augment.copies, "it must be 0 or more")
    for index, transform in enumerate(augment.transforms):
        _require(
            len(transform) == 1 and isinstance(next(iter(transform.values())) or {}, dict),
            path,
            f"augment.transforms[{index}]",
            transform,
            "each entry must be one albumentations transform name with its arguments, e.g. 'HorizontalFlip: {p: 0.5}'",
        )
    _check_train(train, path)
    evaluate = params.evaluate
    _require(evaluate.batch_size >= 1, path, "evaluate.batch_size", evaluate.batch_size, "it must be 1 or more")
    _one_of(evaluate.tta, tuple(TTA), path, "evaluate.tta")
    _require(evaluate.gallery_size >= 0, path, "evaluate.gallery_size", evaluate.gallery_size, "it must be 0 or more")


def _one_of(value: str, choices: Collection[str], path: Path, key: str) -> None:
    _require(value in choices, path, key, value, f"allowed: {', '.join(choices)}")


def _check_train(train: TrainParams, path: Path) -> None:
    _one_of(train.model, MODELS, path, "train.model")
    _one_of(train.mode, TRAIN_MODES, path, "train.mode")
    _require(
        not (train.weights and train.mode == "fromzero"),
        path,
        "train.weights",
        train.weights,
        "train.mode fromzero starts from random weights: set train.weights to '' or choose another train.mode",
    )
    _require(
        not train.weights or Path(train.weights).is_file(),
        path,
        "train.weights",
        train.weights,
        "no such file: give the path of a saved state dict, or '' for the model's ImageNet weights",
    )
    _require(train.epochs >= 1, path, "train.epochs", train.epochs, "it must be 1 or more")
    _require(train.batch_size >= 1, path, "train.batch_size", train.batch_size, "it must be 1 or more")
    _one_of(train.optimizer, OPTIMIZERS, path, "train.optimizer")
    _require(train.lr > 0, path, "train.lr", train.lr, "it must be greater than 0")
    _require(0 <= train.momentum < 1, path, "train.momentum", train.momentum, "it must be in [0, 1)")
    _require(
        not train.nesterov or (train.optimizer == "sgd" and train.momentum > 0),
        path,
        "train.nesterov",
        train.nesterov,
        "Nesterov momentum needs train.optimizer: sgd and train.momentum above 0",
    )
    weight_decay = train.weight_decay
    _require(
        weight_decay == WEIGHT_DECAY_AUTO if isinstance(weight_decay, str) else weight_decay >= 0,
        path,
        "train.weight_decay",
        weight_decay,
        f"give {WEIGHT_DECAY_AUTO} (chosen on the val split) or a number 0 or more",
    )
    _require(
        train.backbone_lr_scale > 0, path, "train.backbone_lr_scale", train.backbone_lr_scale, "it must be above 0"
    )
    _require(
        0 <= train.warmup_epochs < train.epochs,
        path,
        "train.warmup_epochs",
        train.warmup_epochs,
        f"it must be 0 or more and below train.epochs ({train.epochs})",
    )
    _require(0 <= train.dropout < 1, path, "train.dropout", train.dropout, "it must be in [0, 1)")
    _require(
        0 <= train.label_smoothing < 1, path, "train.label_smoothing", train.label_smoothing, "it must be in [0, 1)"
    )
    _one_of(train.class_weights, CLASS_WEIGHTS, path, "train.class_weights")
    _one_of(train.sampler, SAMPLERS, path, "train.sampler")
    schedule = train.schedule
    _one_of(schedule.name, SCHEDULES, path, "train.schedule.name")
    _require(schedule.step_size >= 1, path, "train.schedule.step_size", schedule.step_size, "it must be 1 or more")
    _require(0 < schedule.gamma <= 1, path, "train.schedule.gamma", schedule.gamma, "it must be in (0, 1]")
    _require(schedule.patience >= 0, path, "train.schedule.patience", schedule.patience, "it must be 0 or more")
    stopping = train.early_stopping
    _one_of(stopping.monitor, MONITORS, path, "train.early_stopping.monitor")
    for key, section in (("early_stopping", stopping), ("convergence", train.convergence)):
        _require(section.patience >= 0, path, f"train.{key}.patience", section.patience, "it must be 0 (off) or more")
        _require(section.min_delta >= 0, path, f"train.{key}.min_delta", section.min_delta, "it must be 0 or more")
    _require(train.checkpoint_every >= 0, path, "train.checkpoint_every", train.checkpoint_every, "0 (off) or more")
    _one_of(train.device, DEVICES, path, "train.device")
    _one_of(train.backbone_runtime, tuple(BACKBONE_RUNTIMES), path, "train.backbone_runtime")
    precisions = BACKBONE_RUNTIMES[train.backbone_runtime].precisions
    _require(
        train.backbone_precision in precisions,
        path,
        "train.backbone_precision",
        train.backbone_precision,
        f"allowed with train.backbone_runtime {train.backbone_runtime}: {', '.join(precisions)}",
    )
