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
from imageclf.data import ImageDataset
from imageclf.device import loader_options
from imageclf.files import write_atomic

CACHE_ENVIRONMENT_VARIABLE = "IMAGECLF_FEATURE_CACHE"


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
    """Run the frozen backbone once over `dataset`; return one feature vector per image."""
    backbone = backbone.eval().to(device, memory_format=torch.channels_last)  # outside inference mode: may train later
    features = []
    with torch.inference_mode():
        batches = DataLoader(dataset, batch_size=batch_size, **loader_options(device))
        for images_batch, _ in tqdm(batches, desc=description, unit="batch"):
            features.append(backbone(images_batch.to(device, memory_format=torch.channels_last)).float().cpu())
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
    batch_size: int,
    device: torch.device,
    description: str,
) -> CachedFeatures:
    """The (features, labels) of `dataset`, computing only the images the cache does not hold yet."""
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
            backbone, Subset(dataset, missing), batch_size, device, f"features of {description}"
        )
        store.update({digests[index]: vector.clone() for index, vector in zip(missing, computed, strict=True)})
        buffer = io.BytesIO()
        torch.save(store, buffer)
        write_atomic(store_path, buffer.getvalue())
    reused = len(digests) - len(missing)
    tqdm.write(f"features of {description}: {reused} images from the cache, {len(missing)} computed")
    features = torch.stack([store[digest] for digest in digests])
    return CachedFeatures(TensorDataset(features, torch.tensor(dataset.labels)), reused, len(missing))
