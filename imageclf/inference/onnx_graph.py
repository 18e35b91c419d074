"""A model file as one ONNX graph with the metadata another program needs: what `imageclf predict` runs a
`model.pt` as (`predictor.compiled_model_file`) and what `imageclf export` writes.

The graph's outputs: the class output (`probabilities` or `logits`), the backbone's `features`, and, for a model with
a none-of-these detector, its flags and scores (`models.unknown.onnx_unknown`), so an exported model flags the photos
the model file flags. The metadata is one JSON text under the key `imageclf` (`metadata`): class names in output
order, input size, mean and std, whether the output is probabilities, and the detector's scores, thresholds and
reasons. A model whose file carries the backbone graph that computed its training features (a frozen backbone on ONNX
Runtime) becomes that graph with its head on top, so it predicts exactly as evaluate did; any other is exported from
PyTorch.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from imageclf.backbone.runtimes import BACKBONE_RUNTIMES, onnx_model
from imageclf.data.images import Preprocessing
from imageclf.models.unknown import REASONS, UnknownDetector, onnx_unknown

if TYPE_CHECKING:  # torch: `imageclf predict` reads METADATA_KEY without it
    from imageclf.models.model_file import SavedModel

# Where the metadata lives: ONNX `metadata_props` and OpenVINO `rt_info`, one JSON text each.
METADATA_KEY = "imageclf"
FEATURES = "features"


def unknown_metadata(detector: UnknownDetector | None) -> dict | None:
    """What another program needs to read the detector's outputs; None for a model trained before it existed."""
    if detector is None:
        return None
    return {
        "scores": detector.score_names,
        "thresholds": {name: detector.thresholds[name] for name in detector.score_names},
        "reasons": {name: REASONS[name] for name in detector.score_names},
        "note": detector.note,
        "outputs": "unknown: bool per photo, true when any score is under its threshold; unknown_flags: bool per "
        "photo and score (in the order of scores); unknown_score_<name>: float per photo, higher is more like the "
        "training photos",
    }


def metadata(
    architecture: str,
    classes: list[str],
    preprocessing: Preprocessing,
    softmax: bool,
    precision: str,
    unknown: UnknownDetector | None = None,
) -> str:
    """The JSON text an export carries: all another program needs to feed the model and read its outputs."""
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
            "unknown": unknown_metadata(unknown),
        }
    )


def saved_metadata(saved: SavedModel, softmax: bool, precision: str) -> str:
    return metadata(saved.architecture, saved.classes, saved.preprocessing, softmax, precision, saved.unknown)


def carries_backbone(saved: SavedModel, precision: str) -> bool:
    """Whether the model file holds the backbone graph that computed its training features, at `precision`."""
    return saved.backbone_onnx is not None and saved.backbone_precision == precision


def classifier_onnx(saved: SavedModel, softmax: bool, precision: str, calibration: list[np.ndarray]) -> bytes:
    """The classifier as ONNX with its metadata, at `precision`: the class output and `features`, then the
    detector's outputs.

    A model file that carries its backbone graph at `precision` is exported with that graph and its head's ONNX
    form; otherwise PyTorch exports the whole classifier, quantized on `calibration` where `precision` asks for it.
    The detector's nodes come last, in float32 whatever the precision.
    """
    import onnx
    from onnx import compose

    from imageclf.models.classifier import WithFeatures

    output = "probabilities" if softmax else "logits"
    if carries_backbone(saved, precision):
        backbone = onnx.load_from_string(saved.backbone_onnx)
        head = saved.head.onnx_model(FEATURES, softmax, backbone.opset_import, backbone.ir_version)
        graph = compose.merge_models(backbone, head, io_map=[(backbone.graph.output[0].name, FEATURES)])
        graph.graph.output.extend(backbone.graph.output)  # the features, after the class output
    else:
        size = saved.preprocessing.image_size
        module = WithFeatures(saved.classifier, softmax)
        model = onnx_model(module, (1, 3, size, size), output_names=(output, FEATURES), dynamic_batch=True)
        quantize = BACKBONE_RUNTIMES["onnxruntime"].quantizers[precision]
        graph = onnx.load_from_string(model if quantize is None else quantize(model, calibration))
    if saved.unknown is not None:
        graph = onnx_unknown(graph, saved.unknown, FEATURES)
    entry = graph.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = saved_metadata(saved, softmax, precision)
    return graph.SerializeToString()
