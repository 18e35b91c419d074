"""The optimizers and learning-rate schedules: one name → factory table each, whose keys are the values
`train.optimizer` and `train.schedule.name` accept.

A factory is handed `torch.optim` (or its `lr_scheduler`) when it builds: the `train` params check reads the tables,
and the tables should not cost an import of torch where they are only read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch.optim import lr_scheduler

    Schedule = lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau

# `train.weight_decay: auto`: chosen on the val split where a candidate costs a second (a head on cached features,
# `loop.fit_choosing_weight_decay`); 0 everywhere else.
WEIGHT_DECAY_AUTO = "auto"

# `config` is the `train` params section (training/params.py, which reads these tables).
OPTIMIZERS: dict[str, Callable[[ModuleType, list[dict], Any], torch.optim.Optimizer]] = {
    "adam": lambda optim, groups, config: optim.Adam(groups, weight_decay=config.weight_decay),
    "adamw": lambda optim, groups, config: optim.AdamW(groups, weight_decay=config.weight_decay),
    "sgd": lambda optim, groups, config: optim.SGD(
        groups, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay
    ),
    "rmsprop": lambda optim, groups, config: optim.RMSprop(
        groups, momentum=config.momentum, weight_decay=config.weight_decay
    ),
}

SCHEDULES: dict[str, Callable[[ModuleType, torch.optim.Optimizer, Any], Schedule]] = {
    "none": lambda schedulers, optimizer, config: schedulers.LambdaLR(optimizer, lambda epoch: 1.0),
    "cosine": lambda schedulers, optimizer, config: schedulers.CosineAnnealingLR(optimizer, T_max=config.epochs),
    "step": lambda schedulers, optimizer, config: schedulers.StepLR(
        optimizer, step_size=config.schedule.step_size, gamma=config.schedule.gamma
    ),
    "plateau": lambda schedulers, optimizer, config: schedulers.ReduceLROnPlateau(
        optimizer,
        mode="max" if config.early_stopping.monitor == "val_accuracy" else "min",
        factor=config.schedule.gamma,
        patience=config.schedule.patience,
    ),
}


def build_optimizer(groups: list[dict], config: Any) -> torch.optim.Optimizer:
    """`train.weight_decay: auto` counts as 0 here: `loop.fit_choosing_weight_decay` hands each candidate head its
    number, and everywhere else (fine-tuning, from zero, lr-find, the benchmarks) auto means no L2."""
    from torch import optim

    if isinstance(config.weight_decay, str):
        config = dataclasses.replace(config, weight_decay=0.0)
    return OPTIMIZERS[config.optimizer](optim, groups, config)


def build_schedule(optimizer: torch.optim.Optimizer, config: Any) -> Schedule:
    from torch.optim import lr_scheduler

    return SCHEDULES[config.schedule.name](lr_scheduler, optimizer, config)


def step_schedule(schedule: Schedule, monitored: float) -> None:
    """End an epoch: the plateau schedule decides on the monitored val metric, the others count epochs."""
    from torch.optim import lr_scheduler

    if isinstance(schedule, lr_scheduler.ReduceLROnPlateau):
        schedule.step(monitored)
    else:
        schedule.step()
