"""A content-addressed cache of frozen-backbone features, shared by every run and experiment on this machine.

An entry's address is the image file's content hash inside a store named by everything else the features depend
on: the architecture, every backbone weight, the input size and normalisation, the preprocessing code and the
library versions. Change any of them and the address changes, so a stale feature cannot be found.
"""

import hashlib
import inspect
import io
import json
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from tqdm import tqdm

from imageclf import images
from imageclf.device import loader_options
from imageclf.files import write_atomic
from imageclf.manifest import ImageDataset

CACHE_ENVIRONMENT_VARIABLE = "IMAGECLF_FEATURE_CACHE"
# Every batch the backbone sees has this many images (the last one padded): an image's features then do not
# depend on how many other images happened to be missing from the cache with it. Conv kernels pick their blocking
# by batch size, so the same image in a batch of 3 and of 16 can differ in the last bits, and a model trained on
# features from a warm cache would not match one trained from a cold cache byte for byte.
EXTRACTION_BATCH_SIZE = 32


def cache_dir() -> Path:
    """`$IMAGECLF_FEATURE_CACHE`, else `$XDG_CACHE_HOME/study-classification/features` (`~/.cache/...`)."""
    if os.environ.get(CACHE_ENVIRONMENT_VARIABLE):
        return Path(os.environ[CACHE_ENVIRONMENT_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "study-classification" / "features"


def backbone_key(model_name: str, backbone: nn.Module, dataset: ImageDataset, device: torch.device) -> str:
    """The name of the store that holds this backbone's features of images preprocessed like `dataset`'s."""
    digest = hashlib.sha256()
    preprocessing = dataset.preprocess
    settings = {
        "model": model_name,
        "image_size": preprocessing.image_size,
        "mean": list(preprocessing.mean),
        "std": list(preprocessing.std),
        "device": device.type,
        "batch_size": EXTRACTION_BATCH_SIZE,
        "versions": [version(package) for package in ("torch", "torchvision", "timm", "pillow")],
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(inspect.getsource(images).encode())
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def extract_features(
    backbone: nn.Module, dataset: ImageDataset | Subset, batch_size: int, device: torch.device, description: str
) -> torch.Tensor:
    """Run the frozen backbone once over `dataset`; return one feature vector per image.

    Every batch has `batch_size` images: the last is padded with copies of its last image, whose features are
    dropped, so each image's features depend only on the image, the backbone and `batch_size`. The backbone runs
    in channels-last memory format and is given back in the standard one: its weights' strides (which
    `torch.save` records) do not depend on whether features were computed.
    """
    backbone = backbone.eval().to(device, memory_format=torch.channels_last)  # outside inference mode: may train later
    features = []
    try:
        with torch.inference_mode():
            batches = DataLoader(dataset, batch_size=batch_size, **loader_options(device))
            for images_batch, _ in tqdm(batches, desc=description, unit="batch"):
                count = len(images_batch)
                if count < batch_size:
                    padding = images_batch[-1:].expand(batch_size - count, *images_batch.shape[1:])
                    images_batch = torch.cat([images_batch, padding])
                output = backbone(images_batch.to(device, memory_format=torch.channels_last))
                features.append(output[:count].float().cpu())
    finally:
        backbone.to(memory_format=torch.contiguous_format)
    return torch.cat(features)


@dataclass(frozen=True)
class CachedFeatures:
    dataset: TensorDataset
    reused: int
    computed: int


def cached_features(
    model_name: str,
    backbone: nn.Module,
    dataset: ImageDataset,
    device: torch.device,
    description: str,
) -> CachedFeatures:
    """The (features, labels) of `dataset`, computing only the images the cache does not hold yet.

    Features are computed in batches of `EXTRACTION_BATCH_SIZE`, whatever `train.batch_size` is, so a changed
    batch size reuses them and a warm cache gives the same features as a cold one.
    """
    store_path = cache_dir() / f"{backbone_key(model_name, backbone, dataset, device)}.pt"
    store: dict[str, torch.Tensor] = {}
    if store_path.is_file():
        try:
            store = torch.load(store_path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged store is rebuilt, never trusted
            store = {}
    digests = [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in dataset.paths]
    missing = sorted({digest: index for index, digest in enumerate(digests) if digest not in store}.values())
    if missing:
        computed = extract_features(
            backbone, Subset(dataset, missing), EXTRACTION_BATCH_SIZE, device, f"features of {description}"
        )
        store.update({digests[index]: vector.clone() for index, vector in zip(missing, computed, strict=True)})
        buffer = io.BytesIO()
        torch.save(store, buffer)
        write_atomic(store_path, buffer.getvalue())
    reused = len(digests) - len(missing)
    tqdm.write(f"features of {description}: {reused} images from the cache, {len(missing)} computed")
    features = torch.stack([store[digest] for digest in digests])
    return CachedFeatures(TensorDataset(features, torch.tensor(dataset.labels)), reused, len(missing))
