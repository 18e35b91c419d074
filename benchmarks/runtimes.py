"""Frozen-backbone throughput and accuracy of every backbone runtime and precision (`train.backbone_runtime`,
`train.backbone_precision`), PyTorch first as the reference, in one sitting.

Speed: images/s of each runtime × precision × batch size × thread count on real photos (`--folder`, a labelled
folder), after one warm-up batch, with the time to compile (export, quantize) and whether the same batch twice
gives byte-identical features; `features_sha256` is the digest of one batch's features, to compare between two
runs (another process). int8 calibrates on `--calibration-images` photos of the folder.

Accuracy (`--split`, a folder `split` wrote): the train stage's own `train_classifier` trains the head on each
runtime's features of `train` (no augmented copies) with the shipped `train.*` params, then scores `test` on the
same runtime's features and on PyTorch's (what evaluate and predict compute today). A fresh feature cache in a
temporary folder, so every runtime computes its features.

    python benchmarks/runtimes.py --folder ../shared/data/animals10-sample --models efficientnet_lite0:256
    python benchmarks/runtimes.py --folder F --split data/split --batch-sizes      # accuracy only
"""

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from imageclf.backbone.frozen import FrozenBackbone
from imageclf.backbone.runtimes import BACKBONE_RUNTIMES, compile_backbone
from imageclf.core.cache import CACHE_ENVIRONMENT_VARIABLE
from imageclf.core.config import load
from imageclf.core.errors import UserError
from imageclf.core.program import exits_cleanly
from imageclf.data.datasets import ImageDataset
from imageclf.data.params import DataParams
from imageclf.models.architectures import MODELS, preprocessing_for
from imageclf.models.classifier import create_model
from imageclf.training.params import TrainParams
from imageclf.training.setup import Run, seed_everything
from imageclf.training.train import train_run

SPLITS = ("train", "val", "test")
SETTINGS = [(runtime, precision) for runtime, spec in BACKBONE_RUNTIMES.items() for precision in spec.precisions]


def model_and_size(text: str) -> tuple[str, int]:
    """`NAME:SIZE`, or `NAME` at its native input size."""
    name, _, size = text.partition(":")
    if name not in MODELS:
        raise argparse.ArgumentTypeError(f"unknown model '{name}'; choices: {', '.join(MODELS)}")
    return name, int(size) if size else MODELS[name].input_size


def photos(folder: Path, name: str, size: int, count: int) -> np.ndarray:
    """`count` photos of `folder` (class folders), spread over the classes, preprocessed for `name` at `size`."""
    classes = sorted(path.name for path in folder.iterdir() if path.is_dir())
    dataset = ImageDataset.from_folder(folder, classes, preprocessing_for(name, size))
    order = np.random.default_rng(0).permutation(len(dataset))[:count]
    return np.stack([dataset[int(index)][0].numpy() for index in order])


def speed(backbone: torch.nn.Module, runtime: str, precision: str, images: np.ndarray, batch: int, calls: int) -> dict:
    """Images/s of one runtime at one batch size, on the thread count torch has now."""
    batches = [images[start : start + batch] for start in range(0, len(images) - batch + 1, batch)]
    calibration = batches[: max(1, 64 // batch)]
    start = time.perf_counter()
    features = compile_backbone(runtime, backbone, batches[0].shape, precision, calibration)
    first = features(batches[0])
    compile_s = time.perf_counter() - start
    timed = [batches[index % len(batches)] for index in range(calls)]
    start = time.perf_counter()
    for images_batch in timed:
        features(images_batch)
    elapsed = time.perf_counter() - start
    return {
        "images_per_s": round(calls * batch / elapsed, 1),
        "compile_s": round(compile_s, 1),
        "repeatable": features(batches[0]).tobytes() == first.tobytes(),
        "features_sha256": hashlib.sha256(first.tobytes()).hexdigest()[:16],
    }


def accuracy(name: str, size: int, split: Path, runtime: str, precision: str) -> dict:
    """Test accuracy of a head trained by the train stage's code on `runtime`'s features."""
    data = dataclasses.replace(load(DataParams), image_size=size)
    classes = data.classes
    preprocessing = preprocessing_for(name, size)
    train, val, test = (ImageDataset.from_manifest(split / part, classes, preprocessing) for part in SPLITS)
    config = dataclasses.replace(load(TrainParams), model=name, backbone_runtime=runtime, backbone_precision=precision)
    seed_everything(config.seed)
    model = create_model(name, len(classes), size, pretrained=True)
    start = time.perf_counter()
    result, _ = train_run(Run(data, config, config.training_mode, model, train, val, torch.device("cpu")))
    train_s = time.perf_counter() - start
    labels = torch.tensor(test.labels)
    scores = {}
    for scored_by, scored_precision in ((runtime, precision), ("torch", "fp32")):
        frozen = FrozenBackbone.for_training(
            name, model.backbone, scored_by, scored_precision, torch.device("cpu"), train, config.seed
        )
        features = frozen.features(test, "test").dataset.tensors[0]
        with torch.inference_mode():
            predicted = model.head.eval()(features).argmax(dim=1)
        scores[f"test_mistakes_on_{scored_by}_{scored_precision}"] = int((predicted != labels).sum())
    return {
        "train_s": round(train_s, 1),
        "best_epoch": result.best_epoch,
        "test_images": len(test),
        **scores,
    }


def installed_size(packages: list[str]) -> str:
    """Disk space the packages' installed files take, in MB."""
    from importlib.metadata import files

    total = sum(path.locate().stat().st_size for package in packages for path in files(package) or [])
    return f"{total / 1e6:.0f} MB"


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="labelled photos (class folders) to time on")
    parser.add_argument("--models", nargs="+", type=model_and_size, default=[("efficientnet_lite0", 256)])
    parser.add_argument("--batch-sizes", nargs="*", type=int, default=[1, 32], help="none: no speed measurement")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--calls", type=int, default=3, help="timed batches of 32 (batch 1: 32 × as many calls)")
    parser.add_argument("--split", type=Path, help="a split folder (train, val, test) to measure accuracy on")
    args = parser.parse_args()
    if not args.folder.is_dir():
        raise UserError(f"--folder '{args.folder}' is not a folder: give a folder of class folders of photos")
    load_before = os.getloadavg()
    speeds = []
    for name, size in args.models:
        backbone = create_model(name, 3, size, pretrained=True).backbone
        images = photos(args.folder, name, size, 64)
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batch_sizes:
                for runtime, precision in SETTINGS:
                    calls = args.calls * 32 // batch
                    measured = speed(backbone, runtime, precision, images, batch, calls)
                    speeds.append(
                        {"model": name, "size": size, "threads": threads, "batch": batch, "runtime": runtime}
                        | {"precision": precision, **measured}
                    )
                    print(json.dumps(speeds[-1]), flush=True)
    accuracies = []
    if args.split:
        torch.set_num_threads(max(args.threads))
        with tempfile.TemporaryDirectory() as cache:
            os.environ[CACHE_ENVIRONMENT_VARIABLE] = cache
            for name, size in args.models:
                for runtime, precision in SETTINGS:
                    measured = accuracy(name, size, args.split, runtime, precision)
                    accuracies.append({"model": name, "size": size, "runtime": runtime, "precision": precision})
                    accuracies[-1] |= measured
                    print(json.dumps(accuracies[-1]), flush=True)
    report = {
        "cpu": f"{os.cpu_count()} cores, {platform.machine()}",
        "versions": {package: version(package) for package in ("torch", "onnxruntime", "openvino", "nncf")},
        "installed": {runtime: installed_size(list(spec.packages)) for runtime, spec in BACKBONE_RUNTIMES.items()},
        "load_average": [[round(value, 2) for value in load_before], [round(v, 2) for v in os.getloadavg()]],
        "speed": speeds,
        "accuracy": accuracies,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
