"""Where the tensors live: the device, mixed precision, and how data loaders feed it."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from imageclf.core.errors import UserError

CPU = torch.device("cpu")
DEVICES = ("auto", "cpu", "cuda", "mps")  # `train.device`: auto picks the first present of the others


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; a named device that is not there is a one-line error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(device for device, present in available.items() if present)
    if not available[name]:
        raise UserError(f"train.device is '{name}' but torch finds no {name.upper()} device here: use auto or cpu")
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per process under torchrun
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


@dataclass(frozen=True)
class MixedPrecision:
    """Autocast to `dtype` on `device` (bfloat16, or float16 with loss scaling); None: full precision.

    `imageclf.training.precision` chooses it; with None the same calls run in float32.
    """

    device: torch.device
    dtype: torch.dtype | None = None

    @property
    def name(self) -> str:
        return str(self.dtype or torch.float32).removeprefix("torch.")

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)


def loader_options(device: torch.device) -> dict:
    """Pinned memory and background workers feed a GPU; on the CPU, workers would only compete with the model."""
    if device.type != "cuda":
        return {}
    return {"pin_memory": True, "num_workers": min(8, os.cpu_count() or 1), "persistent_workers": True}


def is_distributed() -> bool:
    """Whether this process is one of several started by torchrun."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


@contextmanager
def process_group() -> Iterator[None]:
    """Under torchrun (WORLD_SIZE above 1), join the process group: NCCL between GPUs, gloo on CPUs.

    Started as a plain `python`, this does nothing.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()
