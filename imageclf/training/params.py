"""The `train` params section. Each name-valued key is checked against the table that implements it, whose keys are
its allowed values: `train.model` (architectures), `train.mode` (modes), `train.optimizer` and `train.schedule.name`
(optim), `train.backbone_runtime` and `train.backbone_precision` (backbone runtimes), `train.device` (device)."""

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from imageclf.backbone.runtimes import BACKBONE_RUNTIMES
from imageclf.core.config import one_of, require
from imageclf.core.device import DEVICES
from imageclf.models.architectures import MODELS
from imageclf.training.balance import CLASS_WEIGHTS, SAMPLERS
from imageclf.training.modes import MODES, Mode
from imageclf.training.optim import OPTIMIZERS, SCHEDULES, WEIGHT_DECAY_AUTO
from imageclf.training.stopping import MONITORS


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
    SECTION: ClassVar[str] = "train"
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
    trainable_blocks: int
    backbone_epochs: int
    freeze_batchnorm: bool
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

    @property
    def training_mode(self) -> Mode:
        """The row of `train.mode`, with `train.trainable_blocks` of the backbone training where that mode allows."""
        return MODES[self.mode].with_trainable_blocks(self.trainable_blocks)

    def check(self, path: Path) -> None:
        one_of(self.model, MODELS, path, "train.model")
        one_of(self.mode, MODES, path, "train.mode")
        partial_modes = ", ".join(name for name, mode in MODES.items() if mode.partial)
        require(
            self.trainable_blocks >= 0,
            path,
            "train.trainable_blocks",
            self.trainable_blocks,
            "it must be 0 (the head only) or more",
        )
        require(
            self.trainable_blocks == 0 or MODES[self.mode].partial,
            path,
            "train.trainable_blocks",
            self.trainable_blocks,
            f"only train.mode {partial_modes} trains part of a backbone: set it to 0 with train.mode {self.mode}",
        )
        require(self.backbone_epochs >= 1, path, "train.backbone_epochs", self.backbone_epochs, "it must be 1 or more")
        require(
            not (self.weights and not MODES[self.mode].pretrained),
            path,
            "train.weights",
            self.weights,
            f"train.mode {self.mode} starts from random weights: set train.weights to '' or choose another train.mode",
        )
        require(
            not self.weights or Path(self.weights).is_file(),
            path,
            "train.weights",
            self.weights,
            "no such file: give the path of a saved state dict, or '' for the model's ImageNet weights",
        )
        require(self.epochs >= 1, path, "train.epochs", self.epochs, "it must be 1 or more")
        require(self.batch_size >= 1, path, "train.batch_size", self.batch_size, "it must be 1 or more")
        one_of(self.optimizer, OPTIMIZERS, path, "train.optimizer")
        require(self.lr > 0, path, "train.lr", self.lr, "it must be greater than 0")
        require(0 <= self.momentum < 1, path, "train.momentum", self.momentum, "it must be in [0, 1)")
        require(
            not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0),
            path,
            "train.nesterov",
            self.nesterov,
            "Nesterov momentum needs train.optimizer: sgd and train.momentum above 0",
        )
        require(
            self.weight_decay == WEIGHT_DECAY_AUTO if isinstance(self.weight_decay, str) else self.weight_decay >= 0,
            path,
            "train.weight_decay",
            self.weight_decay,
            f"give {WEIGHT_DECAY_AUTO} (chosen on the val split) or a number 0 or more",
        )
        require(
            self.backbone_lr_scale > 0, path, "train.backbone_lr_scale", self.backbone_lr_scale, "it must be above 0"
        )
        require(0 <= self.dropout < 1, path, "train.dropout", self.dropout, "it must be in [0, 1)")
        require(
            0 <= self.label_smoothing < 1, path, "train.label_smoothing", self.label_smoothing, "it must be in [0, 1)"
        )
        one_of(self.class_weights, CLASS_WEIGHTS, path, "train.class_weights")
        one_of(self.sampler, SAMPLERS, path, "train.sampler")
        schedule = self.schedule
        one_of(schedule.name, SCHEDULES, path, "train.schedule.name")
        require(schedule.step_size >= 1, path, "train.schedule.step_size", schedule.step_size, "it must be 1 or more")
        require(0 < schedule.gamma <= 1, path, "train.schedule.gamma", schedule.gamma, "it must be in (0, 1]")
        require(schedule.patience >= 0, path, "train.schedule.patience", schedule.patience, "it must be 0 or more")
        one_of(self.early_stopping.monitor, MONITORS, path, "train.early_stopping.monitor")
        for key, section in (("early_stopping", self.early_stopping), ("convergence", self.convergence)):
            require(
                section.patience >= 0, path, f"train.{key}.patience", section.patience, "it must be 0 (off) or more"
            )
            require(section.min_delta >= 0, path, f"train.{key}.min_delta", section.min_delta, "it must be 0 or more")
        require(self.checkpoint_every >= 0, path, "train.checkpoint_every", self.checkpoint_every, "0 (off) or more")
        one_of(self.device, DEVICES, path, "train.device")
        one_of(self.backbone_runtime, BACKBONE_RUNTIMES, path, "train.backbone_runtime")
        precisions = BACKBONE_RUNTIMES[self.backbone_runtime].precisions
        require(
            self.backbone_precision in precisions,
            path,
            "train.backbone_precision",
            self.backbone_precision,
            f"allowed with train.backbone_runtime {self.backbone_runtime}: {', '.join(precisions)}",
        )
