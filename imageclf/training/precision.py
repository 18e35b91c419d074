"""`train.amp`: mixed precision where it makes training faster, and full precision where it does not.

On CUDA autocast always pays (bfloat16, or float16 with loss scaling). On a CPU it depends on the chip: bfloat16
autocast trained Lite0 and resnet18 1.6–1.7× faster on an AMD EPYC of this project's machines and no faster on an
Intel Xeon with the same instruction sets. So on a CPU with bfloat16 kernels, a network with convolutions is timed
for a few steps in both precisions on this machine, once: the rates are kept in the cache folder by CPU, torch
version, threads, network and input shape, and later runs reuse them, so one machine keeps making the same choice.
A network without convolutions (a head on stored features) trains in float32: there is nothing to gain.
"""

import copy
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from imageclf.core.cache import cache_dir
from imageclf.core.device import MixedPrecision, is_distributed, rank
from imageclf.core.files import write_atomic

MIN_SPEEDUP = 1.1  # bfloat16 only where it is at least this much faster: a tie is not worth its rounding
PROBE_STEPS = 2  # timed forward + backward passes per precision, after one untimed warm-up each


def training_precision(
    network: nn.Module, train_data: Dataset, batch_size: int, device: torch.device, amp: bool
) -> MixedPrecision:
    """The precision `network` trains in on `device` with `train.amp`, timed on batches shaped as its training
    batches: the speed-up depends on the batch size."""
    if not amp or device.type not in ("cuda", "cpu"):
        return MixedPrecision(device)
    if device.type == "cuda":
        return MixedPrecision(device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    if not has_convolutions(network) or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return MixedPrecision(device)
    shape = (min(batch_size, len(train_data)), *train_data[0][0].shape)
    faster = torch.tensor([rank() == 0 and bfloat16_is_faster(network, shape)])
    if is_distributed():  # every process trains as the first measured
        torch.distributed.broadcast(faster, 0)
    return MixedPrecision(device, torch.bfloat16 if faster.item() else None)


def has_convolutions(network: nn.Module) -> bool:
    return any(isinstance(module, nn.modules.conv._ConvNd) for module in network.modules())


def precision_file() -> Path:
    return cache_dir() / "precision.json"


def bfloat16_is_faster(network: nn.Module, batch_shape: tuple[int, ...]) -> bool:
    """Whether this machine trains `network` at least MIN_SPEEDUP× faster in bfloat16: measured once, then read."""
    rates = measured_rates(network, batch_shape)
    return rates["bfloat16"] >= MIN_SPEEDUP * rates["float32"]


def measured_rates(network: nn.Module, batch_shape: tuple[int, ...]) -> dict[str, float]:
    """Images/s of a forward and backward pass in float32 and in bfloat16 autocast on this machine, from the
    cache, or measured and cached. A damaged cache file or entry is measured again, never trusted."""
    key = probe_key(network, batch_shape)
    path = precision_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    rates = known.get(key)
    if isinstance(rates, dict) and all(isinstance(rates.get(name), float) for name in ("float32", "bfloat16")):
        return rates
    rates = time_precisions(network, batch_shape)
    known[key] = rates
    write_atomic(path, json.dumps(known, indent=2, sort_keys=True).encode())
    print(
        f"train.amp: bfloat16 {rates['bfloat16']:.1f} vs float32 {rates['float32']:.1f} images/s here (kept in {path})",
        file=sys.stderr,
    )
    return rates


def probe_key(network: nn.Module, batch_shape: tuple[int, ...]) -> str:
    """What the rates depend on: the CPU, torch, its threads, the layers that run (their shapes, which train, their
    modes) and the input."""
    layers = [(name, tuple(tensor.shape), tensor.requires_grad) for name, tensor in network.named_parameters()]
    layers += [module.training for module in network.modules()]
    digest = hashlib.sha256(repr(layers).encode()).hexdigest()[:16]
    return f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {digest} | {batch_shape}"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_precisions(network: nn.Module, batch_shape: tuple[int, ...]) -> dict[str, float]:
    """Time PROBE_STEPS forward and backward passes of a copy of `network`, its layers in the modes they are in (a
    fine-tuned backbone's BatchNorm frozen), in each precision, alternating, and keep each one's fastest: the copy
    spares the network's BatchNorm statistics and gradients, the forked random state its dropout draws, so a run
    trains the same whether it measured or read the rates."""
    probe = copy.deepcopy(network)
    inputs = torch.randn(*batch_shape, generator=torch.Generator().manual_seed(0))
    inputs = inputs.contiguous(memory_format=torch.channels_last) if inputs.dim() == 4 else inputs
    best = {"float32": float("inf"), "bfloat16": float("inf")}
    with torch.random.fork_rng(devices=[]):
        for step in range(PROBE_STEPS + 1):
            for name in best:
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bfloat16"):
                    loss = probe(inputs).float().square().mean()
                loss.backward()
                probe.zero_grad(set_to_none=True)
                if step:  # the first is a warm-up
                    best[name] = min(best[name], time.perf_counter() - start)
    return {name: round(batch_shape[0] / seconds, 2) for name, seconds in best.items()}
