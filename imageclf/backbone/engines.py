"""ONNX Runtime and OpenVINO on the CPU with this project's settings, without torch.

The train stage's frozen backbone (`runtimes`) and prediction with an exported model (`inference`) run their
graphs through these two functions, so both get the same threads and the same float32 arithmetic.
"""

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

BatchFunction = Callable[[np.ndarray], np.ndarray]


def cpu_threads() -> int:
    """`OMP_NUM_THREADS`, else the CPU cores this process may run on: what PyTorch would use."""
    return int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))


def onnxruntime_session(model: bytes | Path, threads: int):
    """An ONNX Runtime CPU session: `threads` for each operator, one operator at a time, errors only in the log.

    Its threads sleep between operators instead of spinning: the processes decoding the next images share the
    cores, and spinning took their time (the animals photos' int8 features: 194-201 images/s against 164-174).
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


def openvino_function(model, threads: int) -> BatchFunction:
    """An OpenVINO model (or .xml path) compiled for the CPU: one stream, so results do not depend on scheduling,
    and float32 throughout (else bfloat16 on CPUs that have it, which gives other numbers)."""
    import openvino

    compiled = openvino.Core().compile_model(
        str(model) if isinstance(model, Path) else model,
        "CPU",
        {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        },
    )
    request = compiled.create_infer_request()
    return lambda batch: request.infer({0: batch})[0].copy()
