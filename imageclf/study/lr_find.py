"""The learning-rate range test (fastai's lr_find): pick `train.lr` from one short run instead of a sweep.

The learning rate grows exponentially from 1e-7 to 10 over a few hundred steps while the loss is smoothed
(exponential moving average, beta 0.98, bias-corrected); the test stops when the smoothed loss passes 4× its best.
The suggestion is where the smoothed loss falls fastest against log(lr), past the first 10 and before the last 5
steps (fastai v1's lr_find). The model is built and trained in memory
only: nothing under models/ or checkpoints/ is read or written.
"""

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from imageclf.core.device import select_device
from imageclf.core.errors import UserError
from imageclf.core.params import Params, load_params
from imageclf.data.datasets import ImageDataset
from imageclf.models.architectures import preprocessing_for
from imageclf.models.classifier import create_model
from imageclf.training.loop import data_loaders, frozen_features, loss_functions, parameter_groups, seed_everything
from imageclf.training.optim import build_optimizer

START_LR = 1e-7
END_LR = 10.0
SMOOTHING = 0.98
DIVERGENCE = 4.0
SKIP_START, SKIP_END = 10, 5


@dataclass(frozen=True)
class RangeTest:
    """The learning rates tried, the smoothed loss at each, and the suggested learning rate."""

    lrs: list[float]
    losses: list[float]
    suggestion: float


def steepest_descent(lrs: list[float], losses: list[float]) -> float:
    """The learning rate where the smoothed loss falls fastest per decade of learning rate, up to its lowest point,
    leaving out the first SKIP_START and last SKIP_END steps as fastai does (the average is still settling; the
    loss turns up).

    Past the lowest point the loss is diverging: a dip there (fine-tuning Lite0 with batches of 16 had one at
    lr 0.74, after the loss had doubled) is noise on the way up, not a rate to train at.
    """
    if len(lrs) < SKIP_START + SKIP_END + 3:
        raise UserError(
            f"the loss diverged after {len(lrs)} steps: too few to suggest a learning rate; try more --steps"
        )
    kept = slice(SKIP_START, len(lrs) - SKIP_END)
    kept_losses = np.array(losses[kept])
    slopes = np.gradient(kept_losses, np.log10(lrs[kept]))
    lowest = int(np.argmin(kept_losses))
    return lrs[kept][int(np.argmin(slopes[: lowest + 1]))]


def range_test(
    network: nn.Module, batches: DataLoader, loss_function: nn.Module, optimizer: torch.optim.Optimizer, steps: int
) -> RangeTest:
    """Train `network` for up to `steps` batches at exponentially growing learning rates."""
    growth = (END_LR / START_LR) ** (1 / max(1, steps - 1))
    scales = [group["lr"] / optimizer.param_groups[-1]["lr"] for group in optimizer.param_groups]  # backbone × scale
    device = next(network.parameters()).device
    network.train()
    lrs, losses, average, best = [], [], 0.0, math.inf
    for step, (inputs, targets) in enumerate(itertools.islice(itertools.cycle(batches), steps)):
        lr = START_LR * growth**step
        for group, scale in zip(optimizer.param_groups, scales, strict=True):
            group["lr"] = lr * scale
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(network(inputs.to(device)), targets.to(device))
        loss.backward()
        optimizer.step()
        average = SMOOTHING * average + (1 - SMOOTHING) * loss.item()
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        if not math.isfinite(smoothed) or smoothed > DIVERGENCE * best:
            break
        best = min(best, smoothed)
        lrs.append(lr)
        losses.append(smoothed)
    return RangeTest(lrs, losses, steepest_descent(lrs, losses))


def range_test_from_params(params: Params, train_dir: Path, val_dir: Path, steps: int) -> RangeTest:
    """The range test for `train.*` as the train stage would start: the same model, mode, optimizer and loss.

    In transfer learning only the head trains, on the backbone's cached features, as in the train stage;
    fine-tuning's warm-up epochs are left out (the whole model takes part from the first step).
    """
    data, config = params.data, params.train
    seed_everything(config.seed)
    preprocessing = preprocessing_for(config.model, data.image_size)
    weights = Path(config.weights) if config.weights else None
    model = create_model(
        config.model, len(data.classes), data.image_size, config.mode != "fromzero", weights, config.dropout
    )
    device = select_device(config.device)
    train_data = ImageDataset.from_manifest(train_dir, data.classes, preprocessing)
    val_data = ImageDataset.from_manifest(val_dir, data.classes, preprocessing)
    network: nn.Module = model
    if config.mode == "transfer_learning":
        train_data, val_data = frozen_features(model, train_data, val_data, config, device)
        network = model.head
    network.to(device)
    train_loss, _ = loss_functions(train_data, val_data, config, device)
    batches, _ = data_loaders(train_data, val_data, config, device, torch.Generator().manual_seed(config.seed))
    optimizer = build_optimizer(parameter_groups(network, config), config)
    return range_test(network, batches, train_loss, optimizer, steps)


def save_plot(test: RangeTest, path: Path) -> None:
    from matplotlib.figure import Figure

    from imageclf.evaluation.reports import save_figure

    figure = Figure(layout="constrained", figsize=(6.5, 4))
    axes = figure.subplots()
    axes.plot(test.lrs, test.losses)
    axes.axvline(test.suggestion, color="tab:red", linestyle="--", label=f"suggested train.lr {test.suggestion:.2g}")
    axes.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="Learning-rate range test")
    axes.legend()
    save_figure(figure, path)


def lr_find_command(train_dir: Path, val_dir: Path, steps: int, plot: Path) -> int:
    test = range_test_from_params(load_params(), train_dir, val_dir, steps)
    save_plot(test, plot)
    steps_run = f"{len(test.lrs)} steps from {test.lrs[0]:.0e} to {test.lrs[-1]:.2g}"
    print(f"{steps_run}; the smoothed loss fell fastest at {test.suggestion:.2g}")
    print(f"suggested: dvc exp run -S train.lr={test.suggestion:.2g}   (plot: {plot})")
    return 0
