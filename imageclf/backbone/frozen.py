"""A frozen backbone: images in, feature vectors out, on one runtime at one precision, each image computed once.

This is where a frozen backbone's runtime and precision are decided (`FrozenBackbone.for_training`, from
`train.backbone_runtime` and `train.backbone_precision`), where int8 picks its calibration images, and where its
features are named in the feature store (`store_key`, the one name of a store). On ONNX Runtime the backbone is an
ONNX graph, which the model file keeps: evaluate and predict then run the very graph the head was trained on, and
evaluate finds the features that graph computed before (`of_graph`).
"""

import hashlib
import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from tqdm import tqdm

from imageclf.backbone import runtimes
from imageclf.backbone.calibration import CALIBRATION_IMAGES, calibration_indices
from imageclf.backbone.runtimes import (
    BACKBONE_RUNTIMES,
    TORCH_ADVICE,
    BatchFunction,
    backbone_onnx,
    compile_backbone,
    cpu_threads,
    onnxruntime_function,
    require_modules,
    runtime_versions,
)
from imageclf.core.cache import cache_dir
from imageclf.core.device import CPU, loader_options
from imageclf.core.errors import UserError
from imageclf.core.files import write_atomic
from imageclf.core.store import read_store, store_path, write_store
from imageclf.data import images
from imageclf.data.datasets import ImageDataset
from imageclf.data.images import Preprocessing

# Every batch the backbone sees has this many images (the last one padded): an image's features then do not
# depend on how many other images happened to be missing from the store with it. Conv kernels pick their blocking
# by batch size, so the same image in a batch of 3 and of 16 can differ in the last bits, and a model trained on
# features from a warm store would not match one trained from a cold store byte for byte.
EXTRACTION_BATCH_SIZE = 32
# On a CPU one worker process decodes the next batches while the runtime computes this one; a GPU's loader options
# have workers of their own.
DECODE_WORKERS = 1
# The runtime whose backbone is a graph a model file can carry.
GRAPH_RUNTIME = "onnxruntime"


@dataclass(frozen=True)
class StoredFeatures:
    """A dataset's (features, labels), and how many images came from the store and how many were computed."""

    dataset: TensorDataset
    reused: int
    computed: int


@dataclass
class FrozenBackbone:
    """Architecture `architecture`'s backbone run by `runtime` at `precision`, compiled when the store first misses
    an image. A precision the runtime calibrates uses `calibration`, training images picked by `calibration_indices`.
    """

    architecture: str
    module: nn.Module | None  # None for a graph a model file carries
    runtime: str
    precision: str
    preprocessing: Preprocessing
    device: torch.device = CPU
    calibration: Subset | None = None
    graph: bytes | None = None  # ONNX Runtime: the backbone graph, once exported, calibrated or read
    compiled: BatchFunction | None = None

    @classmethod
    def for_training(
        cls,
        architecture: str,
        module: nn.Module,
        runtime: str,
        precision: str,
        device: torch.device,
        train_data: ImageDataset,
        seed: int,
        calibration_images: int = CALIBRATION_IMAGES,
    ) -> "FrozenBackbone":
        """The backbone `train.backbone_runtime` and `train.backbone_precision` ask for: on `device` if the runtime
        uses one, else the CPU; calibrated on `calibration_images` images of `train_data` picked by `seed`."""
        spec = BACKBONE_RUNTIMES[runtime]
        calibration = None
        if spec.calibrates(precision):
            calibration = Subset(train_data, calibration_indices(train_data.digests, seed, calibration_images))
        device = device if spec.uses_device else CPU
        return cls(architecture, module, runtime, precision, train_data.preprocess, device, calibration)

    @classmethod
    def of_graph(
        cls, architecture: str, graph: bytes, precision: str, preprocessing: Preprocessing
    ) -> "FrozenBackbone":
        """The backbone graph a model file carries: it finds the features its graph computed before, whatever run
        computed them."""
        return cls(architecture, None, GRAPH_RUNTIME, precision, preprocessing, graph=graph)

    @property
    def carries_graph(self) -> bool:
        """Whether this backbone is an ONNX graph a model file can keep."""
        return self.runtime == GRAPH_RUNTIME

    def store_key(self) -> str:
        """The name of the store of these features: the input settings, the runtime and precision, the library
        versions and the decoding code, and what defines the computation: the graph itself on ONNX Runtime (which
        holds the architecture, the weights and the calibration), elsewhere `recipe_digest`."""
        digest = hashlib.sha256()
        settings = {
            "image_size": self.preprocessing.image_size,
            "mean": list(self.preprocessing.mean),
            "std": list(self.preprocessing.std),
            "batch_size": EXTRACTION_BATCH_SIZE,
            "runtime": self.runtime,
            "precision": self.precision,
            "versions": [version("pillow"), *runtime_versions(self.runtime)],
        }
        digest.update(json.dumps(settings, sort_keys=True).encode())
        digest.update(inspect.getsource(images).encode())
        digest.update(self.onnx_graph() if self.carries_graph else self.recipe_digest().encode())
        return digest.hexdigest()[:32]

    def recipe_digest(self) -> str:
        """What makes the backbone: the architecture, every weight, the device, the runtime's code and library
        versions, and the calibration images. On ONNX Runtime it names the cached graph file."""
        digest = hashlib.sha256()
        settings = {
            "architecture": self.architecture,
            "device": self.device.type,
            "runtime": self.runtime,
            "precision": self.precision,
            "input": [self.preprocessing.image_size, list(self.preprocessing.mean), list(self.preprocessing.std)],
            "versions": [version(package) for package in ("torch", "torchvision", "timm")]
            + runtime_versions(self.runtime),
        }
        digest.update(json.dumps(settings, sort_keys=True).encode())
        digest.update(inspect.getsource(runtimes).encode())
        for name, tensor in self.module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        if self.calibration is not None:
            digests = [self.calibration.dataset.digests[index] for index in self.calibration.indices]
            digest.update(json.dumps(digests).encode())
        return digest.hexdigest()[:32]

    def calibration_batches(self, batch_size: int) -> list[np.ndarray]:
        """The calibration images, preprocessed, in batches of `batch_size`; none where the precision needs none."""
        if self.calibration is None:
            return []
        return [images_batch.numpy() for images_batch, _ in padded_batches(self.calibration, batch_size)]

    def onnx_graph(self) -> bytes:
        """The ONNX Runtime backbone graph (`runtimes.backbone_onnx`), kept in the cache under its recipe: a later
        run whose features are all stored still saves the very graph that computed them in its model file,
        without exporting and calibrating again."""
        if self.graph is not None:
            return self.graph
        path = cache_dir() / f"{self.recipe_digest()}.onnx"
        if path.is_file():
            self.graph = path.read_bytes()
            return self.graph
        size = self.preprocessing.image_size
        batch_shape = (EXTRACTION_BATCH_SIZE, 3, size, size)
        quantize = BACKBONE_RUNTIMES[self.runtime].quantizers[self.precision]
        self.graph = backbone_onnx(self.module, batch_shape, quantize, self.calibration_batches(EXTRACTION_BATCH_SIZE))
        write_atomic(path, self.graph)
        return self.graph

    def compile(self, batch_shape: tuple[int, ...]) -> BatchFunction:
        """The backbone compiled on its runtime, once, when the store first misses an image."""
        if self.compiled is None:
            if self.carries_graph:
                require_modules(
                    BACKBONE_RUNTIMES[self.runtime], f"train.backbone_runtime '{self.runtime}'", TORCH_ADVICE
                )
                self.compiled = onnxruntime_function(self.onnx_graph(), cpu_threads())
            else:
                calibration = self.calibration_batches(batch_shape[0])
                self.compiled = compile_backbone(
                    self.runtime, self.module, batch_shape, self.precision, calibration, self.device
                )
        return self.compiled

    def extract(self, dataset: ImageDataset | Subset, description: str) -> torch.Tensor:
        """Run the backbone once over `dataset`, in batches of EXTRACTION_BATCH_SIZE; one feature vector per image.

        The last batch is padded with copies of its last image, whose features are dropped, so each image's
        features depend only on the image and the backbone.
        """
        batches = padded_batches(dataset, EXTRACTION_BATCH_SIZE, self.device)
        total = -(-len(dataset) // EXTRACTION_BATCH_SIZE)
        features = []
        for images_batch, count in tqdm(batches, total=total, desc=description, unit="batch"):
            compiled = self.compile(tuple(images_batch.shape))
            try:
                computed = compiled(images_batch.numpy())
            except Exception as error:  # ONNX Runtime and OpenVINO raise their own types for graphs they cannot run
                if self.runtime == "torch":
                    raise
                raise UserError(
                    f"train.backbone_runtime {self.runtime} ({self.precision}) cannot run train.model "
                    f"'{self.architecture}' at {images_batch.shape[-1]} px ({str(error).splitlines()[0][:160]}): set "
                    "train.backbone_precision: fp32, a larger data.image_size, or train.backbone_runtime: torch"
                ) from None
            features.append(torch.from_numpy(computed[:count]))
        return torch.cat(features)

    def features(self, dataset: ImageDataset, description: str) -> StoredFeatures:
        """The (features, labels) of `dataset`, computing only the images the store does not hold yet."""
        path = store_path(self.store_key())
        store = read_store(path)
        digests = dataset.digests
        missing = sorted({digest: index for index, digest in enumerate(digests) if digest not in store}.values())
        if missing:
            computed = self.extract(Subset(dataset, missing), f"features of {description}")
            store.update({digests[index]: vector for index, vector in zip(missing, computed, strict=True)})
            write_store(path, store)
        reused = len(digests) - len(missing)
        tqdm.write(f"features of {description}: {reused} images from the cache, {len(missing)} computed")
        features = torch.stack([store[digest] for digest in digests])
        return StoredFeatures(TensorDataset(features, torch.tensor(dataset.labels)), reused, len(missing))


def padded_batches(dataset: ImageDataset | Subset, batch_size: int, device: torch.device = CPU) -> Iterator:
    """Batches of exactly `batch_size` images, the last padded with copies of its last image.

    Yields (images, count): the first `count` images are real.
    """
    options = loader_options(device) or {"num_workers": DECODE_WORKERS}
    for images_batch, _ in DataLoader(dataset, batch_size=batch_size, **options):
        count = len(images_batch)
        if count < batch_size:
            padding = images_batch[-1:].expand(batch_size - count, *images_batch.shape[1:])
            images_batch = torch.cat([images_batch, padding])
        yield images_batch, count
