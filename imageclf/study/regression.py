"""`imageclf regression`: the study notes' first lesson, learning y = 2x + 1 from five points with one linear neuron.

It prints the line learned and saves the loss curve."""

import argparse
import io
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from imageclf.core.files import write_atomic

X = [0.0, 1.0, 3.0, 5.0, 6.0]
Y = [1.0, 3.0, 7.0, 11.0, 13.0]


def fit_line(epochs: int, lr: float, seed: int = 0) -> tuple[float, float, list[float]]:
    """Fit y = weight·x + bias to (X, Y) by gradient descent on the mean squared error.

    Returns the weight, the bias and the loss of each epoch.
    """
    torch.manual_seed(seed)
    inputs, targets = torch.tensor(X).unsqueeze(1), torch.tensor(Y).unsqueeze(1)
    neuron = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(neuron.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        loss = nn.functional.mse_loss(neuron(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return neuron.weight.item(), neuron.bias.item(), losses


def save_loss_curve(losses: list[float], path: Path) -> None:
    """The loss per epoch on a log scale, as a PNG."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.plot(range(1, len(losses) + 1), losses)
    axes.set(xlabel="epoch", ylabel="mean squared error", yscale="log", title="Learning y = 2x + 1")
    axes.grid(True, alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    write_atomic(Path(path), buffer.getvalue())


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.02, help="learning rate of plain gradient descent")
    parser.add_argument("--plot", type=Path, default=Path("regression_loss.png"), help="the loss curve PNG")


def run(args: argparse.Namespace) -> int:
    weight, bias, losses = fit_line(args.epochs, args.lr)
    save_loss_curve(losses, args.plot)
    print(f"data: X = {X}, Y = {Y}")
    print(f"learned: y = {weight:.4f}·x + {bias:.4f} (the truth: y = 2x + 1), final loss {losses[-1]:.2e}")
    print(f"loss curve: {args.plot}")
    return 0
