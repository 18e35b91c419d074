"""Where the tensors live: the device, mixed precision on CUDA, and how data loaders feed it."""

import os
from dataclasses import dataclass

import torch

from imageclf.errors import UserError


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; a named device that is not there is a one-line error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        return torch.device(next(device for device, present in available.items() if present))
    if not available[name]:
        raise UserError(f"train.device is '{name}' but torch finds no {name.upper()} device here: use auto or cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    """Mixed precision on CUDA (bfloat16 where the GPU supports it, else float16 with loss scaling).

    Everywhere else, and with `enabled` False, the same calls run in full precision.
    """

    device: torch.device
    enabled: bool

    @property
    def active(self) -> bool:
        return self.enabled and self.device.type == "cuda"

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.active and torch.cuda.is_bf16_supported() else torch.float16

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.active)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.active and self.dtype == torch.float16)


def loader_options(device: torch.device) -> dict:
    """Pinned memory and background workers feed a GPU; on the CPU, workers would only compete with the model."""
    if device.type != "cuda":
        return {}
    return {"pin_memory": True, "num_workers": min(8, os.cpu_count() or 1), "persistent_workers": True}
