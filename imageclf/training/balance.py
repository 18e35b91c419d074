"""Imbalanced classes: the order training images are drawn in (`train.sampler`) and the loss weight of each class
(`train.class_weights`). One name → function table each; their keys are the values the params accept."""

from collections.abc import Callable

import torch
from torch.utils.data import RandomSampler, Sampler, WeightedRandomSampler


def shuffle(labels: torch.Tensor, generator: torch.Generator) -> Sampler:
    return RandomSampler(range(len(labels)), generator=generator)


def weighted(labels: torch.Tensor, generator: torch.Generator) -> Sampler:
    """A draw with replacement that shows every class equally often."""
    weights = 1.0 / torch.bincount(labels).double()
    return WeightedRandomSampler(weights[labels], num_samples=len(labels), generator=generator)


def no_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    return None


def balanced(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each class's loss weight inverse to its frequency (scikit-learn's formula)."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    return len(labels) / (num_classes * counts.clamp(min=1))


SAMPLERS: dict[str, Callable[[torch.Tensor, torch.Generator], Sampler]] = {"shuffle": shuffle, "weighted": weighted}
CLASS_WEIGHTS: dict[str, Callable[[torch.Tensor, int], torch.Tensor | None]] = {
    "none": no_class_weights,
    "balanced": balanced,
}
