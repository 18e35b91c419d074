"""Backbone forward throughput of every model in the registry, at its native input size, with and without channels_last.

Times `--batches` batches of random images (after one warm-up batch) under `torch.inference_mode()`, the way
`train` computes features with a frozen backbone; the weights are random, which costs the same as ImageNet's.

    python benchmarks/backbones.py                                  # the whole registry (several minutes on a CPU)
    python benchmarks/backbones.py --models resnet18 efficientnet_lite0 --batches 2
"""

import argparse
import json
import os
import platform
import time

import torch
from torch import nn
from tqdm import tqdm

from imageclf.models.architectures import MODELS


def images_per_second(backbone: nn.Module, images: torch.Tensor, batches: int) -> float:
    """Forward throughput over `batches` batches of `images`, after one warm-up batch."""
    with torch.inference_mode():
        backbone(images)
        start = time.perf_counter()
        for _ in range(batches):
            backbone(images)
        return batches * len(images) / (time.perf_counter() - start)


def measure(name: str, batch_size: int, batches: int) -> dict:
    """Throughput of one model's backbone in the default (contiguous) memory format and in channels_last."""
    spec = MODELS[name]
    torch.manual_seed(0)
    backbone = spec.build_backbone(spec.input_size).eval()
    images = torch.randn(batch_size, 3, spec.input_size, spec.input_size)
    contiguous = images_per_second(backbone, images, batches)
    channels_last = images_per_second(
        backbone.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last), batches
    )
    return {
        "model": name,
        "input_size": spec.input_size,
        "parameters_millions": round(sum(parameter.numel() for parameter in backbone.parameters()) / 1e6, 1),
        "contiguous_images_per_s": round(contiguous, 1),
        "channels_last_images_per_s": round(channels_last, 1),
        "channels_last_speedup": round(channels_last / contiguous, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="NAME")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per model and memory format")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    results = [measure(name, args.batch_size, args.batches) for name in tqdm(args.models, desc="backbones")]
    report = {
        "batch_size": args.batch_size,
        "batches": args.batches,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": f"{os.cpu_count()} cores, {platform.machine()}",
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
