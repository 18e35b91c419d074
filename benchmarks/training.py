"""Training speed per architecture and what trains, and how far it is from the hardware.

For each model and input size, one training step (forward + backward + AdamW, batch `--batch`, channels_last, as the
train stage's `fit` places the model) is timed two ways:
- compute: the same batch of inputs again and again, nothing else;
- epoch: the train stage's own epoch (`run_epoch` over `MemoryBatches` of `DecodedImages` with the shipped
  `augment.online`), so that what the data path adds shows as the ratio epoch / compute.
The two are timed in alternation, `--rounds` times each, and the median of each is kept: on a shared machine a
single timing of either varied by half.
FLOPs of forward + backward per image (3 × the forward's, from torch's FLOP counter) × images/s = the GFLOPS achieved.

What trains: `whole` (fromzero; fine_tuning, whose BatchNorm statistics stay frozen), and `last N` (transfer_learning
with `train.trainable_blocks: N`, on the stored activations of the blocks before: compute only). `--bf16` adds a
bfloat16-autocast row per setting (the CPU's bfloat16 kernels, which the train stage uses where `train.amp`
measures them faster on this machine: imageclf/training/precision.py); `--compile` adds the whole network under
`torch.compile` (inductor; its compilation runs in the untimed steps), in each precision asked for.

    python benchmarks/training.py                                 # Lite0 256 px, resnet18 128 px, original 128 px
    python benchmarks/training.py --setting efficientnet_lite0:192 --last 1 2 --bf16
    python benchmarks/training.py --setting resnet18:128 original:128 --bf16 --compile --steps 10
"""

import argparse
import contextlib
import json
import platform
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imageclf.core.config import load
from imageclf.core.device import MixedPrecision
from imageclf.data.decoded import DecodedImages
from imageclf.data.online_augmentation import OnlineAugmentation
from imageclf.data.params import AugmentParams
from imageclf.models.architectures import preprocessing_for
from imageclf.models.classifier import Classifier, create_model, split_backbone
from imageclf.training.loop import MemoryBatches, run_epoch

CPU = torch.device("cpu")
DEFAULT_SETTINGS = ("efficientnet_lite0:256", "resnet18:128", "original:128")


def flops_per_image(network: nn.Module, inputs: torch.Tensor) -> float:
    """FLOPs of one image's training step (a multiply-add is 2): 3 × the forward pass's, as the backward pass computes
    a gradient for each layer's input and one for its weights, each as costly as the forward. Counted on the forward
    only: torch 2.14's counter counts a depthwise convolution's backward as a dense one (40× Lite0's forward)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(inputs)
    return 3 * counter.get_total_flops() / len(inputs)


def autocast(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def compute_rate(network: nn.Module, inputs: torch.Tensor, steps: int, bf16: bool) -> float:
    """Images/s of training steps on one batch, after two untimed ones."""
    optimizer = torch.optim.AdamW([parameter for parameter in network.parameters() if parameter.requires_grad])
    labels = torch.arange(len(inputs)) % 3
    loss_function = nn.CrossEntropyLoss()

    def step() -> None:
        with autocast(bf16):
            loss = loss_function(network(inputs).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(inputs) / (time.perf_counter() - started)


def epoch_rate(classifier: Classifier, size: int, batch: int, steps: int, model: str) -> float:
    """Images/s of the train stage's epoch over `steps` batches of augmented decoded images (random pixels)."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (batch * steps, 3, size, size), dtype=torch.uint8, generator=generator)
    online = OnlineAugmentation(load(AugmentParams).online)
    images = DecodedImages(pixels, [index % 3 for index in range(len(pixels))], preprocessing_for(model, size), online)
    optimizer = torch.optim.AdamW(classifier.parameters())
    precision = MixedPrecision(CPU)
    scaler = precision.grad_scaler()
    loss_function = nn.CrossEntropyLoss()
    run_epoch(classifier, MemoryBatches(images, batch, range(batch)), loss_function, precision, optimizer, scaler)
    started = time.perf_counter()
    run_epoch(classifier, MemoryBatches(images, batch), loss_function, precision, optimizer, scaler)
    return len(images) / (time.perf_counter() - started)


def whole_network(model: str, size: int) -> Classifier:
    classifier = create_model(model, 3, size, pretrained=False)
    return classifier.to(memory_format=torch.channels_last).train()


def row(name: str, flops: float, rate: float, epoch: float | None = None) -> dict:
    """One setting's figures; the epoch's only where it was timed."""
    figures = {"setting": name, "gflop_per_image": round(flops / 1e9, 3), "images_per_second": round(rate, 1)}
    if epoch is not None:
        figures |= {"epoch_images_per_second": round(epoch, 1), "epoch_to_step_ratio": round(epoch / rate, 2)}
    return figures | {"gflops": round(flops * rate / 1e9, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--setting", nargs="+", default=list(DEFAULT_SETTINGS), help="MODEL:SIZE (default: %(default)s)"
    )
    parser.add_argument("--last", nargs="*", type=int, default=[1], help="trainable_blocks rows (default: 1)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed batches per figure (default: 4)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="step and epoch timings, alternated; medians kept (default: 5)"
    )
    parser.add_argument("--bf16", action="store_true", help="also bfloat16 autocast")
    parser.add_argument("--compile", action="store_true", help="also the whole network under torch.compile")
    args = parser.parse_args()
    rows = []
    for setting in args.setting:
        model, size = setting.split(":")[0], int(setting.split(":")[1])
        torch.manual_seed(0)
        inputs = torch.randn(args.batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        classifier = whole_network(model, size)
        flops = flops_per_image(classifier, inputs)
        epoch_args = (whole_network(model, size), size, args.batch, args.steps, model)
        rates = []  # (step, epoch) per round: the two alternate, so that a busy machine slows both alike
        for _ in range(args.rounds):
            rates.append((compute_rate(classifier, inputs, args.steps, bf16=False), epoch_rate(*epoch_args)))
        rate, epoch = (statistics.median(column) for column in zip(*rates, strict=True))
        rows.append(row(f"{model} {size} px whole", flops, rate, epoch))
        if args.bf16:
            rows.append(row(f"{model} {size} px whole bf16", flops, compute_rate(classifier, inputs, args.steps, True)))
        for bf16 in ([False, True] if args.bf16 else [False]) if args.compile else []:
            compiled = torch.compile(whole_network(model, size))  # compiled by the untimed steps
            name = f"{model} {size} px whole compiled{' bf16' if bf16 else ''}"
            rows.append(row(name, flops, compute_rate(compiled, inputs, args.steps, bf16)))
        for count in args.last if model != "original" else []:
            first, last = split_backbone(model, whole_network(model, size).backbone, count)
            with torch.no_grad():
                activations = first.eval()(inputs)
            network = nn.Sequential(last, nn.Linear(classifier.head[-1].in_features, 3)).train()
            network = network.to(memory_format=torch.channels_last)
            flops = flops_per_image(network, activations)
            rows.append(
                row(f"{model} {size} px last {count}", flops, compute_rate(network, activations, args.steps, False))
            )
            if args.bf16:
                rate = compute_rate(network, activations, args.steps, bf16=True)
                rows.append(row(f"{model} {size} px last {count} bf16", flops, rate))
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    print(json.dumps({**machine, "torch": torch.__version__, "batch": args.batch, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
