"""The runtimes that run a frozen backbone over batches of images: PyTorch, ONNX Runtime and OpenVINO.

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
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imageclf.core.errors import UserError
from imageclf.models.unknown import UNKNOWN_NODES

if TYPE_CHECKING:
    import torch
    from torch import nn

BatchFunction = Callable[[np.ndarray], np.ndarray]


def cpu_threads() -> int:
    """`OMP_NUM_THREADS`, else the CPU cores this process may run on: the threads every runtime gets."""
    return int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))


def onnxruntime_session(model: bytes | Path, threads: int):
    """An ONNX Runtime CPU session: `threads` for each operator, one operator at a time, errors only in the log.

    Its threads sleep between operators instead of spinning: the processes decoding the next images share the
    cores, and spinning would take their time (docs/benchmarks.md).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnxruntime_function(model: bytes | Path, threads: int) -> BatchFunction:
    """The graph's first output for a batch fed to its only input."""
    session = onnxruntime_session(model, threads)
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def openvino_compiled(model, threads: int):
    """An OpenVINO model (or .xml path) compiled for the CPU: one stream, so results do not depend on scheduling,
    and float32 throughout (else bfloat16 on CPUs that have it, which gives other numbers)."""
    import openvino

    return openvino.Core().compile_model(
        str(model) if isinstance(model, Path) else model,
        "CPU",
        {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        },
    )


def openvino_function(model, threads: int) -> BatchFunction:
    """The compiled model's (`openvino_compiled`) first output for a batch."""
    request = openvino_compiled(model, threads).create_infer_request()
    return lambda batch: request.infer({0: batch})[0].copy()


TORCH_ADVICE = "or set train.backbone_runtime: torch"
Quantizer = Callable[[object, Sequence[np.ndarray]], object]  # (a runtime's model, calibration batches) -> int8 model


@dataclass(frozen=True)
class BackboneRuntime:
    """How one runtime runs a backbone: `compile` turns it into a function from a float32 NCHW batch to features,
    quantized by `quantizers[precision]` on calibration batches of training images (None: float32 as exported).
    The keys of `quantizers` are the precisions it offers. `packages` are the pip names it needs, imported under
    `modules`. Only PyTorch `uses_device` (`train.device`); the others run on the CPU.
    """

    compile: Callable[[nn.Module, tuple[int, ...], Quantizer | None, Sequence[np.ndarray], torch.device], BatchFunction]
    quantizers: dict[str, Quantizer | None]
    packages: tuple[str, ...]
    modules: tuple[str, ...]
    uses_device: bool = False

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self.quantizers)

    def calibrates(self, precision: str) -> bool:
        """Whether `precision` needs calibration images (an int8 model's activation ranges)."""
        return self.quantizers[precision] is not None


def torch_features(
    backbone: nn.Module, batch_shape: tuple[int, ...], quantize: None, calibration: Sequence[np.ndarray], device
) -> BatchFunction:
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
    module: nn.Module,
    batch_shape: tuple[int, ...],
    output_names: Sequence[str] = ("features",),
    dynamic_batch: bool = False,
) -> bytes:
    """The module as an ONNX graph for batches of `batch_shape` (any batch size with `dynamic_batch`), in
    float32; its input is named `images`, its outputs (the module's, in order) `output_names`."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; the new one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _frozen_copy(module),
            (torch.zeros(batch_shape),),
            buffer,
            input_names=["images"],
            output_names=list(output_names),
            opset_version=17,
            dynamic_axes={name: {0: "batch"} for name in ("images", *output_names)} if dynamic_batch else None,
            dynamo=False,
        )
    return buffer.getvalue()


# Images per run of ONNX Runtime's calibrator. It keeps every intermediate tensor of a run alive until the min and
# max reductions at the end of its graph, so its memory grows with the run; the ranges, so the quantized graph, do
# not depend on how the images are cut into runs.
CALIBRATION_RUN_IMAGES = 4


# Seven-bit weights: on a CPU without VNNI (AVX2 only, as some AMD EPYC machines here), both runtimes multiply uint8
# activations by int8 weights with an instruction that adds pairs of products in 16 bits and saturates, and full
# 8-bit weights then distort Lite0's features (the ImageNet labels of the sample changed on 2 of 16 photos; with 7
# bits, on none). A model file's graph runs on whatever CPU loads it, so every graph is quantized with 7-bit weights,
# at the cost of a little precision where VNNI would have done without (tests/test_runtimes.py checks the labels).


def quantize_onnx(model: bytes, calibration: Sequence[np.ndarray]) -> bytes:
    """ONNX Runtime's static QDQ quantization to int8 (per-channel 7-bit weights, min-max ranges over the images of
    the `calibration` batches).

    The ranges come from ONNX Runtime's own min-max calibrator, run on a session with the graph optimizations on
    and this project's threads (`quantize_static` runs it with every optimization off, about twice as slow),
    `CALIBRATION_RUN_IMAGES` images at a time. The ranges reach `quantize_static` through its calibration cache file.
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
            calibrator.infer_session = onnxruntime_session(Path(calibrator.augmented_model_path), cpu_threads())
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
                reduce_range=True,  # seven-bit weights (above)
                calibration_cache_path=ranges,
            )
        finally:
            logging.disable(logging.NOTSET)
        return quantized.read_bytes()


def backbone_onnx(
    backbone: nn.Module, batch_shape: tuple[int, ...], quantize: Quantizer | None, calibration: Sequence[np.ndarray]
) -> bytes:
    """The backbone as an ONNX graph for any batch size, quantized when asked (`quantize_onnx` on `calibration`).

    The graph that computed a model's training features is saved in its model file, so evaluate and predict run
    the same (quantized) backbone as the head was trained on.
    """
    model = onnx_model(backbone, batch_shape, dynamic_batch=True)
    return model if quantize is None else quantize(model, calibration)


def onnxruntime_features(
    backbone: nn.Module, batch_shape: tuple[int, ...], quantize: Quantizer | None, calibration, device
) -> BatchFunction:
    """ONNX Runtime on the CPU, running `backbone_onnx`."""
    return onnxruntime_function(backbone_onnx(backbone, batch_shape, quantize, calibration), cpu_threads())


def quantize_openvino(model, calibration: Sequence[np.ndarray]):
    """NNCF's post-training quantization of an OpenVINO model to int8 (7-bit weights), its ranges set on
    `calibration`. The none-of-these nodes of an exported classifier (`unknown.onnx_unknown`) stay float32: their
    thresholds were set on float32 arithmetic."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    nncf.set_log_level(40)  # errors only: its progress bars would bury the training log
    seven_bits = AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)  # in every layer, see quantize_onnx
    detector = nncf.IgnoredScope(patterns=[f"{UNKNOWN_NODES}.*"], validate=False)
    return nncf.quantize(
        model,
        nncf.Dataset(list(calibration)),
        subset_size=len(calibration),
        ignored_scope=detector,
        advanced_parameters=seven_bits,
    )


def openvino_features(
    backbone: nn.Module, batch_shape: tuple[int, ...], quantize: Quantizer | None, calibration, device
) -> BatchFunction:
    """OpenVINO on the CPU (`openvino_function`), quantized when asked (`quantize_openvino`)."""
    import openvino
    import torch

    model = openvino.convert_model(torch.export.export(_frozen_copy(backbone), (torch.zeros(batch_shape),)))
    return openvino_function(model if quantize is None else quantize(model, calibration), cpu_threads())


def _frozen_copy(backbone: nn.Module) -> nn.Module:
    """A copy in evaluation mode on the CPU, leaving the caller's backbone (which may train later) as it is."""
    return copy.deepcopy(backbone).cpu().eval().requires_grad_(False)


BACKBONE_RUNTIMES: dict[str, BackboneRuntime] = {
    "torch": BackboneRuntime(torch_features, {"fp32": None}, ("torch",), ("torch",), uses_device=True),
    "onnxruntime": BackboneRuntime(
        onnxruntime_features, {"fp32": None, "int8": quantize_onnx}, ("onnxruntime", "onnx"), ("onnxruntime", "onnx")
    ),
    "openvino": BackboneRuntime(
        openvino_features, {"fp32": None, "int8": quantize_openvino}, ("openvino", "nncf"), ("openvino", "nncf")
    ),
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
) -> BatchFunction:
    """Backbone → features function on runtime `name`; raise UserError if the runtime is not installed.

    A precision the runtime `calibrates` needs `calibration`: batches of `batch_shape` from the training images,
    whose activation ranges fix the quantization; the same batches give the same quantized model.
    """
    runtime = BACKBONE_RUNTIMES[name]
    require_modules(runtime, f"train.backbone_runtime '{name}'", TORCH_ADVICE)
    if runtime.calibrates(precision) and not calibration:
        raise ValueError(f"{precision} needs calibration batches")
    return runtime.compile(backbone, batch_shape, runtime.quantizers[precision], calibration, device)
