"""`imageclf lr-find`: suggest train.lr with a learning-rate range test (fastai's lr_find): pick `train.lr` from one
short run of the train params of params.yaml instead of a sweep.

The learning rate grows exponentially from 1e-7 to 10 over a few hundred steps while the loss is smoothed
(exponential moving average, beta 0.98, bias-corrected); the test stops when the smoothed loss passes 4× its best.
The suggestion is where the smoothed loss falls fastest against log(lr), past the first 10 and before the last 5
steps (fastai v1's lr_find). The model is built and trained in memory
only: nothing under models/ or checkpoints/ is read or written.
"""

import argparse
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from imageclf.core import paths
from imageclf.core.arguments import positive_int
from imageclf.core.config import load
from imageclf.core.errors import UserError
from imageclf.data.params import AugmentParams, DataParams, OnlineAugmentParams
from imageclf.training.loop import data_loaders, loss_functions, parameter_groups, torch_threads
from imageclf.training.optim import build_optimizer
from imageclf.training.params import TrainParams
from imageclf.training.setup import feed, set_up

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


def range_test_from_params(
    data: DataParams, train: TrainParams, online: OnlineAugmentParams, train_dir: Path, val_dir: Path, steps: int
) -> RangeTest:
    """The range test for `train.*` as the train stage would start: the same run set-up, what its mode trains (the
    head on stored features, or the whole classifier on decoded, augmented images), the same optimizer and loss.
    Where a pretrained backbone trains, its head's probe is left out (the whole model takes part from the first
    step)."""
    run = set_up(data, train, train_dir, val_dir, online)
    fed = feed(run)
    network = fed.network.to(run.device)
    train_loss, _ = loss_functions(fed.train, fed.val, train, run.device)
    batches, _ = data_loaders(fed.train, fed.val, train, run.device, torch.Generator().manual_seed(train.seed))
    optimizer = build_optimizer(parameter_groups(network, train), train)
    with torch_threads(fed.threads):
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
    online = load(AugmentParams).online
    test = range_test_from_params(load(DataParams), load(TrainParams), online, train_dir, val_dir, steps)
    save_plot(test, plot)
    steps_run = f"{len(test.lrs)} steps from {test.lrs[0]:.0e} to {test.lrs[-1]:.2g}"
    print(f"{steps_run}; the smoothed loss fell fastest at {test.suggestion:.2g}")
    print(f"suggested: dvc exp run -S train.lr={test.suggestion:.2g}   (plot: {plot})")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "fastai's range test for the train.* params of params.yaml: the learning rate grows from 1e-7 to 10 until "
        "the smoothed loss passes 4x its best; suggests where it fell fastest. Writes only the plot."
    )
    parser.add_argument("--steps", type=positive_int, default=100, help="batches at most (100)")
    parser.add_argument("--plot", type=Path, default=Path("lr_find.png"), help="the loss curve PNG (lr_find.png)")
    parser.add_argument(
        "--train-dir", type=Path, default=paths.AUGMENTED_DIR, help=f"training manifest folder ({paths.AUGMENTED_DIR})"
    )
    parser.add_argument(
        "--val-dir", type=Path, default=paths.VAL_DIR, help=f"validation manifest folder ({paths.VAL_DIR})"
    )


def run(args: argparse.Namespace) -> int:
    return lr_find_command(args.train_dir, args.val_dir, args.steps, args.plot)
