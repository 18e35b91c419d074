"""Engines that run a frozen backbone over batches of images: PyTorch, ONNX Runtime and OpenVINO.

PyTorch trains every model and is the reference; for a frozen backbone, whose only job is one forward pass per
image, ONNX Runtime and OpenVINO run the same weights several times faster on a CPU, in float32 or, calibrated on
some training images, in int8. Each runtime turns a backbone into a function from a float32 NCHW batch of a fixed
shape to its feature vectors. The libraries are imported when a backbone is compiled, so a run whose features
are all in the cache does not need them; torch too, as the params check reads `BACKBONE_RUNTIMES` in every stage
and split and augment never load it.
"""

from __future__ import annotations

import copy
import importlib
import io
import logging
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imageclf.backbone.engines import onnxruntime_function, onnxruntime_session, openvino_function
from imageclf.core.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

FeatureFunction = Callable[[np.ndarray], np.ndarray]
PRECISIONS = ("fp32", "int8")
TORCH_ADVICE = "or set train.backbone_runtime: torch"


@dataclass(frozen=True)
class BackboneRuntime:
    """How one engine compiles a backbone; `packages` are the pip names it needs, imported under `modules`.

    Only PyTorch `uses_device` (`train.device`); the others run on the CPU.
    """

    compile: Callable[[nn.Module, tuple[int, ...], str, Sequence[np.ndarray], torch.device], FeatureFunction]
    precisions: tuple[str, ...]
    packages: tuple[str, ...]
    modules: tuple[str, ...]
    uses_device: bool = False


def threads() -> int:
    """The threads PyTorch uses (`OMP_NUM_THREADS`, else the CPU cores): every runtime gets as many."""
    import torch

    return torch.get_num_threads()


def torch_features(
    backbone: nn.Module, batch_shape: tuple[int, ...], precision: str, calibration: Sequence[np.ndarray], device
) -> FeatureFunction:
    """The backbone itself, in channels-last memory format (faster on a CPU), on `device`.

    It runs a copy, so the caller's backbone keeps the standard memory format, which `torch.save` records.
    """
    import torch

    frozen = _frozen_copy(backbone).to(device, memory_format=torch.channels_last)

    def features(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            images = torch.from_numpy(batch).to(device, memory_format=torch.channels_last)
            return frozen(images).float().cpu().numpy()

    return features


def onnx_model(
    module: nn.Module, batch_shape: tuple[int, ...], output_name: str = "features", dynamic_batch: bool = False
) -> bytes:
    """The module as an ONNX graph for batches of `batch_shape` (any batch size with `dynamic_batch`), in
    float32; its input is named `images`."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; the new one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _frozen_copy(module),
            (torch.zeros(batch_shape),),
            buffer,
            input_names=["images"],
            output_names=[output_name],
            opset_version=17,
            dynamic_axes={"images": {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None,
            dynamo=False,
        )
    return buffer.getvalue()


# Images per run of ONNX Runtime's calibrator. It keeps every intermediate tensor of a run alive until the min and
# max reductions at the end of its graph: Lite0 at 256 px took 5.5 GB for runs of 32 images, 1.5 GB for runs of 4,
# and the ranges, so the quantized graph, came out byte for byte the same.
CALIBRATION_RUN_IMAGES = 4


def quantize_onnx(model: bytes, calibration: Sequence[np.ndarray]) -> bytes:
    """ONNX Runtime's static QDQ quantization to int8 (per-channel weights, min-max ranges over the images of the
    `calibration` batches).

    The ranges come from ONNX Runtime's own min-max calibrator, run on a session with the graph optimizations on
    and this project's threads (`quantize_static` runs it with every optimization off), `CALIBRATION_RUN_IMAGES`
    images at a time: for 64 images at 256 px the whole quantization takes 2.6-3.0 s here instead of 5.0-7.1. The
    ranges reach `quantize_static` through its calibration cache file.
    """
    from onnxruntime import quantization
    from onnxruntime.quantization import calibrate

    images = np.concatenate(list(calibration))

    class Calibration(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = (
                images[start : start + CALIBRATION_RUN_IMAGES]
                for start in range(0, len(images), CALIBRATION_RUN_IMAGES)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    with tempfile.TemporaryDirectory() as folder:
        source, quantized, ranges = (Path(folder) / name for name in ("fp32.onnx", "int8.onnx", "ranges.json"))
        source.write_bytes(model)
        logging.disable(logging.WARNING)  # its advice to preprocess the graph first, on the root logger
        try:
            calibrator = calibrate.create_calibrator(source, augmented_model_path=str(Path(folder) / "augmented.onnx"))
            calibrator.infer_session = onnxruntime_session(Path(calibrator.augmented_model_path), threads())
            calibrator.collect_data(Calibration())
            calibrate.save_tensors_data(calibrator.compute_data(), ranges)
            quantization.quantize_static(
                source,
                quantized,
                None,
                quant_format=quantization.QuantFormat.QDQ,
                per_channel=True,
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                calibration_cache_path=ranges,
            )
        finally:
            logging.disable(logging.NOTSET)
        return quantized.read_bytes()


def backbone_onnx(backbone: nn.Module, batch_shape: tuple[int, ...], precision: str, calibration) -> bytes:
    """The backbone as an ONNX graph for any batch size, fp32 or int8 (`quantize_onnx` on `calibration`).

    The graph that computed a model's training features is saved in its model file, so evaluate and predict run
    the same (quantized) backbone as the head was trained on.
    """
    model = onnx_model(backbone, batch_shape, dynamic_batch=True)
    return quantize_onnx(model, calibration) if precision == "int8" else model


def onnxruntime_features(
    backbone: nn.Module, batch_shape: tuple[int, ...], precision: str, calibration: Sequence[np.ndarray], device
) -> FeatureFunction:
    """ONNX Runtime's CPU engine on `backbone_onnx`."""
    return onnxruntime_function(backbone_onnx(backbone, batch_shape, precision, calibration), threads())


def quantize_openvino(model, calibration: Sequence[np.ndarray]):
    """NNCF's post-training quantization of an OpenVINO model to int8, its ranges set on `calibration`."""
    import nncf

    nncf.set_log_level(40)  # errors only: its progress bars would bury the training log
    return nncf.quantize(model, nncf.Dataset(list(calibration)), subset_size=len(calibration))


def openvino_features(
    backbone: nn.Module, batch_shape: tuple[int, ...], precision: str, calibration: Sequence[np.ndarray], device
) -> FeatureFunction:
    """OpenVINO's CPU engine (`engines.openvino_function`), fp32 or int8 (`quantize_openvino`)."""
    import openvino
    import torch

    model = openvino.convert_model(torch.export.export(_frozen_copy(backbone), (torch.zeros(batch_shape),)))
    if precision == "int8":
        model = quantize_openvino(model, calibration)
    return openvino_function(model, threads())


def _frozen_copy(backbone: nn.Module) -> nn.Module:
    """A copy in evaluation mode on the CPU, leaving the caller's backbone (which may train later) as it is."""
    return copy.deepcopy(backbone).cpu().eval().requires_grad_(False)


BACKBONE_RUNTIMES: dict[str, BackboneRuntime] = {
    "torch": BackboneRuntime(torch_features, ("fp32",), ("torch",), ("torch",), uses_device=True),
    "onnxruntime": BackboneRuntime(onnxruntime_features, PRECISIONS, ("onnxruntime", "onnx"), ("onnxruntime", "onnx")),
    "openvino": BackboneRuntime(openvino_features, PRECISIONS, ("openvino", "nncf"), ("openvino", "nncf")),
}


def runtime_versions(name: str) -> list[str]:
    """The versions of the packages a runtime's features depend on, for the feature cache's key."""
    return [f"{package} {version(package)}" for package in BACKBONE_RUNTIMES[name].packages]


def require_modules(runtime: BackboneRuntime, user: str, alternative: str) -> None:
    """Raise UserError naming `user`, the missing package, its pip command and `alternative`, unless every
    module the runtime needs imports."""
    for module in runtime.modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise UserError(
                f"{user} needs {module}, which is not installed: pip install {' '.join(runtime.packages)}, "
                f"{alternative}"
            ) from None


def compile_backbone(
    name: str,
    backbone: nn.Module,
    batch_shape: tuple[int, ...],
    precision: str,
    calibration: Sequence[np.ndarray] = (),
    device: torch.device | str = "cpu",
) -> FeatureFunction:
    """Backbone → features function on runtime `name`; raise UserError if the runtime is not installed.

    int8 needs `calibration`: batches of `batch_shape` from the training images, whose activation ranges fix
    the quantization; the same batches give the same quantized model.
    """
    runtime = BACKBONE_RUNTIMES[name]
    require_modules(runtime, f"train.backbone_runtime '{name}'", TORCH_ADVICE)
    if precision == "int8" and not calibration:
        raise ValueError("int8 needs calibration batches")
    return runtime.compile(backbone, batch_shape, precision, calibration, device)
