"""Fine-tuning throughput with and without mixed precision, through the train stage's own epoch loop.

Fine-tunes the whole network (`train.mode: fine_tuning`, the shipped optimizer and learning rates) on the photos of
`--folder`, decoded once and kept in memory, so the figure is the model's and not the JPEG decoder's. Each setting
starts from the same ImageNet weights, runs one untimed warm-up epoch, then `--epochs` timed ones, and reports
images/s and the training loss per epoch: both must be finite, and the last below the first (it trains).

With `train.amp` on, the precision is the train stage's choice: autocast on CUDA; on a CPU, bfloat16 where a few
timed steps on this machine find it faster (imageclf/training/precision.py), else float32, and the report says
which ran.

    python benchmarks/amp.py                                   # data/sample, params.yaml's model and input size
    python benchmarks/amp.py --folder ../shared/data/animals10-sample --model resnet18 --weights resnet18.pt
"""

import argparse
import dataclasses
import json
import math
import platform
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from imageclf.core.config import load
from imageclf.core.device import DEVICES, select_device
from imageclf.core.errors import UserError
from imageclf.core.program import exits_cleanly
from imageclf.data.datasets import ImageDataset
from imageclf.data.params import DataParams
from imageclf.models.architectures import preprocessing_for
from imageclf.models.classifier import Classifier, create_model
from imageclf.training.loop import parameter_groups, run_epoch
from imageclf.training.optim import build_optimizer
from imageclf.training.params import TrainParams
from imageclf.training.precision import training_precision
from imageclf.training.setup import seed_everything

PROJECT = Path(__file__).resolve().parent.parent


def in_memory(folder: Path, classes: list[str], model: str, image_size: int) -> TensorDataset:
    """Every photo of `folder` decoded and preprocessed once."""
    images = ImageDataset.from_folder(folder, classes, preprocessing_for(model, image_size))
    tensors, labels = zip(*(images[index] for index in range(len(images))), strict=True)
    return TensorDataset(torch.stack(tensors), torch.tensor(labels))


def fine_tune(model: Classifier, data: TensorDataset, config: TrainParams, device: torch.device, epochs: int) -> dict:
    """Images/s and loss per epoch of fine-tuning `model` with `config.amp` on or off."""
    model = model.to(device, memory_format=torch.channels_last).train()  # as the train stage's `fit` places it
    precision = training_precision(model, data, config.batch_size, device, config.amp)
    optimizer = build_optimizer(parameter_groups(model, config), config)
    scaler = precision.grad_scaler()
    batches = DataLoader(data, batch_size=config.batch_size, shuffle=True)
    loss_function = nn.CrossEntropyLoss()
    run_epoch(model, batches, loss_function, precision, optimizer, scaler)  # warm-up: kernels, allocator
    losses, seconds = [], 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        loss, _ = run_epoch(model, batches, loss_function, precision, optimizer, scaler)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        losses.append(round(loss, 4))
    return {
        "amp": config.amp,
        "precision": precision.name,
        "images_per_second": round(epochs * len(data) / seconds, 1),
        "train_loss_per_epoch": losses,
        "trains": all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0],
    }


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=PROJECT / "data/sample", help="<folder>/<class>/<image>")
    parser.add_argument("--model", default=None, help="a train.model (default: params.yaml's)")
    parser.add_argument("--weights", type=Path, default=None, help="a local state dict, as train.weights")
    parser.add_argument("--image-size", type=int, default=None, help="default: params.yaml's data.image_size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per setting, after one warm-up epoch")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    args = parser.parse_args()
    if not args.folder.is_dir():
        raise UserError(f"--folder '{args.folder}' is not a folder: give one with a subfolder per class")
    data_params, train = load(DataParams, PROJECT / "params.yaml"), load(TrainParams, PROJECT / "params.yaml")
    config = dataclasses.replace(train, model=args.model or train.model, mode="fine_tuning", batch_size=args.batch_size)
    image_size = args.image_size or data_params.image_size
    classes = data_params.classes
    device = select_device(args.device)
    data = in_memory(args.folder, classes, config.model, image_size)
    results = []
    for amp in (False, True):
        seed_everything(config.seed)  # the same head for both settings
        model = create_model(config.model, len(classes), image_size, pretrained=True, weights=args.weights)
        results.append(fine_tune(model, data, dataclasses.replace(config, amp=amp), device, args.epochs))
    on_cuda = device.type == "cuda"
    report = {
        "device": torch.cuda.get_device_name(device) if on_cuda else f"{device.type}, {platform.machine()}",
        "torch": torch.__version__,
        "model": config.model,
        "image_size": image_size,
        "batch_size": config.batch_size,
        "images": len(data),
        "results": results,
    }
    report["amp_speedup"] = round(results[1]["images_per_second"] / results[0]["images_per_second"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
