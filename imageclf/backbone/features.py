"""A content-addressed cache of frozen-backbone features, shared by every run and experiment on this machine.

An entry's address is the image file's content hash inside a store named by everything else the features depend
on: the architecture, every backbone weight, the input size and normalisation, the preprocessing code, the
runtime and precision that ran the backbone (and, for int8, the calibration images) and the library versions.
Change any of them and the address changes, so a stale feature cannot be found.
"""

import hashlib
import inspect
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from tqdm import tqdm

from imageclf.backbone import runtimes
from imageclf.backbone.engines import onnxruntime_function
from imageclf.backbone.runtimes import (
    BACKBONE_RUNTIMES,
    TORCH_ADVICE,
    FeatureFunction,
    backbone_onnx,
    compile_backbone,
    require_modules,
    runtime_versions,
    threads,
)
from imageclf.core.cache import CACHE_ENVIRONMENT_VARIABLE as CACHE_ENVIRONMENT_VARIABLE  # where tests set it
from imageclf.core.cache import cache_dir
from imageclf.core.device import CPU, loader_options
from imageclf.core.errors import UserError
from imageclf.core.files import write_atomic
from imageclf.data import images
from imageclf.data.datasets import ImageDataset
from imageclf.data.images import Preprocessing

# Every batch the backbone sees has this many images (the last one padded): an image's features then do not
# depend on how many other images happened to be missing from the cache with it. Conv kernels pick their blocking
# by batch size, so the same image in a batch of 3 and of 16 can differ in the last bits, and a model trained on
# features from a warm cache would not match one trained from a cold cache byte for byte.
EXTRACTION_BATCH_SIZE = 32


# On a CPU one worker process decodes the next batches while the runtime computes this one (on the animals photos
# under load: 84 s instead of 92 s for the train stage); a GPU's loader options have workers of their own.
DECODE_WORKERS = 1
# int8: training images whose activation ranges set the quantization (2 batches). On three splits of the animals
# photos, 32, 64, 128 and 320 of them gave the same test and hold-out mistakes, one test photo apart. Calibration
# runs the fp32 graph with a min and max reduction on every tensor: 320 images made a cold train stage about 10 s
# longer (with the calibrator as it ran then); with 64 the whole quantization now takes about 3 s
# (`runtimes.quantize_onnx`).
CALIBRATION_IMAGES = 64


def calibration_indices(digests: list[str], seed: int, count: int = CALIBRATION_IMAGES) -> list[int]:
    """`count` distinct images, ranked by a seeded hash of their content: the choice depends on the seed and the
    images only, not on their order, and adding an image changes it only if the new one ranks among the first."""
    first = {digest: index for index, digest in reversed(list(enumerate(digests)))}
    ranked = sorted(first, key=lambda digest: hashlib.sha256(f"{seed}:{digest}".encode()).hexdigest())
    return [first[digest] for digest in ranked[:count]]


@dataclass
class FeatureExtractor:
    """A frozen backbone run by `runtime` at `precision`, compiled when the cache first misses an image.

    int8 calibrates on `calibration`, training images chosen by `calibration_indices`.
    """

    model_name: str
    backbone: nn.Module | None  # None for a graph a model file carries
    runtime: str
    precision: str
    device: torch.device
    calibration: Subset | None = None
    preprocessing: Preprocessing | None = None  # of the images it is given; names an ONNX Runtime graph's store
    compiled: FeatureFunction | None = None
    graph: bytes | None = None  # onnxruntime: the backbone graph, once exported, calibrated or read

    @classmethod
    def of_graph(cls, model_name: str, graph: bytes, precision: str, preprocessing: Preprocessing):
        """The extractor of a backbone graph a model file carries (`models.SavedModel.backbone_onnx`), for
        evaluate: it finds the features its graph computed before, whatever run computed them."""
        return cls(model_name, None, "onnxruntime", precision, CPU, preprocessing=preprocessing, graph=graph)

    def key(self, preprocessing: Preprocessing) -> str:
        """The name of the store that holds these features of images preprocessed by `preprocessing`."""
        digest = hashlib.sha256()
        settings = {
            **input_settings(preprocessing),
            "model": self.model_name,
            "device": self.device.type,
            "runtime": self.runtime,
            "precision": self.precision,
            "versions": [version(package) for package in ("torch", "torchvision", "timm", "pillow")]
            + runtime_versions(self.runtime),
        }
        digest.update(json.dumps(settings, sort_keys=True).encode())
        digest.update(inspect.getsource(images).encode())
        digest.update(inspect.getsource(runtimes).encode())
        for name, tensor in self.backbone.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        if self.precision == "int8":
            digest.update(json.dumps(self.calibration_digests()).encode())
        return digest.hexdigest()[:32]

    def store_key(self, preprocessing: Preprocessing) -> str:
        """The name of the store of these features: `key`, or for ONNX Runtime `graph_key` of the graph itself,
        so that evaluate, which has only the graph a model file carries, shares the store of the train stage."""
        if self.runtime == "onnxruntime":
            return graph_key(self.onnx_graph(), preprocessing)
        return self.key(preprocessing)

    def calibration_digests(self) -> list[str]:
        return [self.calibration.dataset.digests[index] for index in self.calibration.indices]

    def calibration_batches(self, batch_size: int) -> list[np.ndarray]:
        """int8: the calibration images, preprocessed, in batches of `batch_size`; none for fp32."""
        if self.precision != "int8":
            return []
        return [images_batch.numpy() for images_batch, _ in padded_batches(self.calibration, batch_size)]

    def onnx_graph(self) -> bytes:
        """The ONNX Runtime backbone graph (`runtimes.backbone_onnx`), kept in the cache beside its features:
        a later run whose features are all cached still saves the very graph that computed them in its model
        file, without exporting and calibrating again."""
        if self.graph is not None:
            return self.graph
        path = cache_dir() / f"{self.key(self.preprocessing)}.onnx"
        if path.is_file():
            self.graph = path.read_bytes()
            return self.graph
        size = self.preprocessing.image_size
        batch_shape = (EXTRACTION_BATCH_SIZE, 3, size, size)
        calibration = self.calibration_batches(EXTRACTION_BATCH_SIZE)
        self.graph = backbone_onnx(self.backbone, batch_shape, self.precision, calibration)
        write_atomic(path, self.graph)
        return self.graph

    def compile(self, batch_shape: tuple[int, ...]) -> FeatureFunction:
        """The backbone compiled on its runtime, once, when the cache first misses an image."""
        if self.compiled is not None:
            return self.compiled
        if self.runtime == "onnxruntime":
            require_modules(BACKBONE_RUNTIMES[self.runtime], "train.backbone_runtime 'onnxruntime'", TORCH_ADVICE)
            self.compiled = onnxruntime_function(self.onnx_graph(), threads())
        else:
            calibration = self.calibration_batches(batch_shape[0])
            self.compiled = compile_backbone(
                self.runtime, self.backbone, batch_shape, self.precision, calibration, self.device
            )
        return self.compiled


def input_settings(preprocessing: Preprocessing) -> dict:
    """What every feature store's name records of the backbone's input: the preprocessing and the batch size."""
    return {
        "image_size": preprocessing.image_size,
        "mean": list(preprocessing.mean),
        "std": list(preprocessing.std),
        "batch_size": EXTRACTION_BATCH_SIZE,
    }


def graph_key(graph: bytes, preprocessing: Preprocessing) -> str:
    """The name of the store of the features an ONNX Runtime backbone graph computes from images preprocessed by
    `preprocessing`: the graph holds the architecture, the weights and the calibration."""
    digest = hashlib.sha256()
    settings = {**input_settings(preprocessing), "versions": [version("pillow"), *runtime_versions("onnxruntime")]}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(inspect.getsource(images).encode())
    digest.update(graph)
    return digest.hexdigest()[:32]


def feature_extractor(
    model_name: str,
    backbone: nn.Module,
    runtime: str,
    precision: str,
    device: torch.device,
    train_data: ImageDataset,
    seed: int,
    calibration_images: int = CALIBRATION_IMAGES,
) -> FeatureExtractor:
    """The extractor `train.backbone_runtime` and `train.backbone_precision` ask for; int8 calibrates on
    `calibration_images` images of `train_data` picked by `seed`."""
    calibration = None
    if not BACKBONE_RUNTIMES[runtime].uses_device:
        device = CPU
    if precision == "int8":
        digests = train_data.digests
        calibration = Subset(train_data, calibration_indices(digests, seed, calibration_images))
    return FeatureExtractor(model_name, backbone, runtime, precision, device, calibration, train_data.preprocess)


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


def extract_features(
    extractor: FeatureExtractor, dataset: ImageDataset | Subset, batch_size: int, description: str
) -> torch.Tensor:
    """Run the frozen backbone once over `dataset`; return one feature vector per image.

    Every batch has `batch_size` images: the last is padded with copies of its last image, whose features are
    dropped, so each image's features depend only on the image, the backbone and `batch_size`.
    """
    batches = padded_batches(dataset, batch_size, extractor.device)
    total = -(-len(dataset) // batch_size)
    features = []
    for images_batch, count in tqdm(batches, total=total, desc=description, unit="batch"):
        compiled = extractor.compile(tuple(images_batch.shape))
        try:
            computed = compiled(images_batch.numpy())
        except Exception as error:  # ONNX Runtime and OpenVINO raise their own types for graphs they cannot run
            if extractor.runtime == "torch":
                raise
            size = images_batch.shape[-1]
            raise UserError(
                f"train.backbone_runtime {extractor.runtime} ({extractor.precision}) cannot run train.model "
                f"'{extractor.model_name}' at {size} px ({str(error).splitlines()[0][:160]}): set "
                "train.backbone_precision: fp32, a larger data.image_size, or train.backbone_runtime: torch"
            ) from None
        features.append(torch.from_numpy(computed[:count]))
    return torch.cat(features)


@dataclass(frozen=True)
class CachedFeatures:
    dataset: TensorDataset
    reused: int
    computed: int


def read_store(path: Path) -> dict[str, torch.Tensor]:
    """A store's features by image digest; empty when there is none yet or it is damaged (rebuilt, never trusted)."""
    if not path.is_file():
        return {}
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return dict(zip(saved["digests"], saved["features"], strict=True))
    except Exception:
        return {}


def write_store(path: Path, store: dict[str, torch.Tensor]) -> None:
    """One matrix and the digests of its rows: loading 3,000 vectors as one tensor takes a tenth of a second,
    as 3,000 tensors more than a second."""
    buffer = io.BytesIO()
    torch.save({"digests": list(store), "features": torch.stack(list(store.values()))}, buffer)
    write_atomic(path, buffer.getvalue())


def cached_features(extractor: FeatureExtractor, dataset: ImageDataset, description: str) -> CachedFeatures:
    """The (features, labels) of `dataset`, computing only the images the cache does not hold yet.

    Features are computed in batches of `EXTRACTION_BATCH_SIZE`, whatever `train.batch_size` is, so a changed
    batch size reuses them and a warm cache gives the same features as a cold one.
    """
    store_path = cache_dir() / f"{extractor.store_key(dataset.preprocess)}.pt"
    store = read_store(store_path)
    digests = dataset.digests
    missing = sorted({digest: index for index, digest in enumerate(digests) if digest not in store}.values())
    if missing:
        computed = extract_features(
            extractor, Subset(dataset, missing), EXTRACTION_BATCH_SIZE, f"features of {description}"
        )
        store.update({digests[index]: vector for index, vector in zip(missing, computed, strict=True)})
        write_store(store_path, store)
    reused = len(digests) - len(missing)
    tqdm.write(f"features of {description}: {reused} images from the cache, {len(missing)} computed")
    features = torch.stack([store[digest] for digest in digests])
    return CachedFeatures(TensorDataset(features, torch.tensor(dataset.labels)), reused, len(missing))
