"""A model file as one ONNX graph with the metadata another program needs: what `imageclf predict` runs a
`model.pt` as (`predictor.compiled_model_file`) and what `imageclf export --format onnx` writes.

The metadata is one JSON text under the key `imageclf` (`metadata`): class names in output order, input size, mean
and std, whether the output is probabilities, the unknown threshold. A model whose file carries the backbone graph
that computed its training features (a frozen backbone on ONNX Runtime) becomes that graph with its head on top, so
it predicts exactly as evaluate did; any other is exported from PyTorch.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from imageclf.backbone.runtimes import BACKBONE_RUNTIMES, onnx_model
from imageclf.data.images import Preprocessing

if TYPE_CHECKING:  # torch: `imageclf predict` reads METADATA_KEY without it
    from imageclf.models.model_file import SavedModel

# Where the metadata lives: ONNX `metadata_props` and OpenVINO `rt_info`, one JSON text each.
METADATA_KEY = "imageclf"


def metadata(
    architecture: str,
    classes: list[str],
    preprocessing: Preprocessing,
    softmax: bool,
    precision: str,
    unknown_threshold: float | None = None,
) -> str:
    """The JSON text an export carries: all another program needs to feed the model and read its output."""
    return json.dumps(
        {
            "model": architecture,
            "classes": list(classes),
            "image_size": preprocessing.image_size,
            "mean": list(preprocessing.mean),
            "std": list(preprocessing.std),
            "input": "images: float32 NCHW RGB; the whole photo resized to image_size x image_size (bicubic), "
            "scaled to 0..1, then (x - mean) / std per channel",
            "output": "probabilities (softmax)" if softmax else "logits (apply softmax)",
            "softmax": softmax,
            "precision": precision,
            "unknown_threshold": unknown_threshold,
            "unknown": "a photo whose highest probability is under unknown_threshold is none of the classes "
            "(null: no threshold)",
        }
    )


def saved_metadata(saved: SavedModel, softmax: bool, precision: str) -> str:
    return metadata(saved.architecture, saved.classes, saved.preprocessing, softmax, precision, saved.unknown_threshold)


def carries_backbone(saved: SavedModel, precision: str) -> bool:
    """Whether the model file holds the backbone graph that computed its training features, at `precision`."""
    return saved.backbone_onnx is not None and saved.backbone_precision == precision


def classifier_onnx(saved: SavedModel, softmax: bool, precision: str, calibration: list[np.ndarray]) -> bytes:
    """The classifier as ONNX with its metadata, at `precision`.

    A model file that carries its backbone graph at `precision` is exported with that graph and its head's ONNX
    form; otherwise PyTorch exports the whole classifier, quantized on `calibration` where `precision` asks for it.
    """
    import onnx
    from onnx import compose
    from torch import nn

    if carries_backbone(saved, precision):
        backbone = onnx.load_from_string(saved.backbone_onnx)
        head = saved.head.onnx_model("features", softmax, backbone.opset_import, backbone.ir_version)
        graph = compose.merge_models(backbone, head, io_map=[(backbone.graph.output[0].name, "features")])
    else:
        size = saved.preprocessing.image_size
        module = nn.Sequential(saved.classifier, nn.Softmax(dim=1)) if softmax else saved.classifier
        model = onnx_model(
            module, (1, 3, size, size), output_name="probabilities" if softmax else "logits", dynamic_batch=True
        )
        quantize = BACKBONE_RUNTIMES["onnxruntime"].quantizers[precision]
        graph = onnx.load_from_string(model if quantize is None else quantize(model, calibration))
    entry = graph.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = saved_metadata(saved, softmax, precision)
    return graph.SerializeToString()
