"""The optimizers and learning-rate schedules: one name → factory table each, whose keys are the values
`train.optimizer` and `train.schedule.name` accept (params.py checks against these keys)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch.optim import lr_scheduler

if TYPE_CHECKING:  # params.py imports this module for the table keys
    from imageclf.params import TrainParams

Schedule = lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau

OPTIMIZERS: dict[str, Callable[[list[dict], TrainParams], torch.optim.Optimizer]] = {
    "adam": lambda groups, config: torch.optim.Adam(groups, weight_decay=config.weight_decay),
    "adamw": lambda groups, config: torch.optim.AdamW(groups, weight_decay=config.weight_decay),
    "sgd": lambda groups, config: torch.optim.SGD(
        groups, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay
    ),
    "rmsprop": lambda groups, config: torch.optim.RMSprop(
        groups, momentum=config.momentum, weight_decay=config.weight_decay
    ),
}

SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, TrainParams], Schedule]] = {
    "none": lambda optimizer, config: lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0),
    "cosine": lambda optimizer, config: lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs),
    "step": lambda optimizer, config: lr_scheduler.StepLR(
        optimizer, step_size=config.schedule.step_size, gamma=config.schedule.gamma
    ),
    "plateau": lambda optimizer, config: lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="max" if config.early_stopping.monitor == "val_accuracy" else "min",
        factor=config.schedule.gamma,
        patience=config.schedule.patience,
    ),
}


def build_optimizer(groups: list[dict], config: TrainParams) -> torch.optim.Optimizer:
    """`train.weight_decay: auto` counts as 0 here: `training.fit_choosing_weight_decay` hands each candidate head
    its number, and everywhere else (fine-tuning, from zero, lr-find, the benchmarks) auto means no L2."""
    if isinstance(config.weight_decay, str):
        config = dataclasses.replace(config, weight_decay=0.0)
    return OPTIMIZERS[config.optimizer](groups, config)


def build_schedule(optimizer: torch.optim.Optimizer, config: TrainParams) -> Schedule:
    return SCHEDULES[config.schedule.name](optimizer, config)


def step_schedule(schedule: Schedule, monitored: float) -> None:
    """End an epoch: the plateau schedule decides on the monitored val metric, the others count epochs."""
    if isinstance(schedule, lr_scheduler.ReduceLROnPlateau):
        schedule.step(monitored)
    else:
        schedule.step()
