"""A store: one file per store name in this machine's cache, holding one tensor per image by the image's digest.

The feature store (a frozen backbone's features, `FrozenBackbone.store_key`) and the decoded-image store
(`imageclf.data.decoded`) are stores. A store's name records everything its tensors depend on except the image,
and an entry's address inside it is the image file's content hash, so a stale entry cannot be found.
"""

import io
from pathlib import Path

import torch

from imageclf.core.cache import cache_dir
from imageclf.core.files import write_atomic


def store_path(key: str) -> Path:
    return cache_dir() / f"{key}.pt"


def read_store(path: Path) -> dict[str, torch.Tensor]:
    """A store's tensors by image digest; empty when there is none yet or it is damaged (rebuilt, never trusted)."""
    if not path.is_file():
        return {}
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return dict(zip(saved["digests"], saved["features"], strict=True))
    except Exception:
        return {}


def write_store(path: Path, store: dict[str, torch.Tensor]) -> None:
    """One matrix and the digests of its rows: one tensor loads many times faster than thousands of small ones."""
    buffer = io.BytesIO()
    torch.save({"digests": list(store), "features": torch.stack(list(store.values()))}, buffer)
    write_atomic(path, buffer.getvalue())
