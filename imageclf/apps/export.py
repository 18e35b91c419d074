"""`imageclf export`: the whole classifier (backbone and head, softmax if asked) as ONNX or OpenVINO IR.

The file carries what another program needs to use it, as one JSON text under the key `imageclf`
(`inference.export_metadata`: class names in output order, input size, mean and std, whether the output is
probabilities): in ONNX `metadata_props`, in OpenVINO `rt_info`. The batch size is free. A model trained on ONNX
Runtime features carries that backbone graph (fp32 or int8), and its ONNX export at that precision (the default)
is that graph with the head on top: it predicts exactly as evaluate did. Otherwise int8 is calibrated on
training images of the split picked by a seed (`features.calibration_indices`), so the same model, images and seed
give the same file. The files are written in a hidden folder beside the target and renamed into place: an
interrupted export leaves nothing half-written.
"""

import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imageclf.backbone.features import CALIBRATION_IMAGES, calibration_indices
from imageclf.backbone.runtimes import BACKBONE_RUNTIMES, onnx_model, quantize_onnx, quantize_openvino, require_modules
from imageclf.core.device import select_device
from imageclf.core.errors import UserError
from imageclf.data.images import open_rgb
from imageclf.data.manifest import content_digest, read_manifest
from imageclf.inference.predictor import METADATA_KEY, Predictor, export_metadata
from imageclf.models.classifier import SavedModel, load_model

CALIBRATION_BATCH_SIZE = 32


def carries_backbone(saved: SavedModel, precision: str) -> bool:
    """Whether the model file holds the backbone graph that computed its training features, at `precision`."""
    return saved.backbone_onnx is not None and saved.backbone_precision == precision


def exported_module(saved: SavedModel, softmax: bool) -> nn.Module:
    """The classifier, with a softmax after its logits when asked."""
    return nn.Sequential(saved.model, nn.Softmax(dim=1)) if softmax else saved.model


def head_on_backbone(saved: SavedModel, softmax: bool):
    """The model file's own backbone graph (the one that computed its training features) followed by its head:
    a Gemm with the linear layer's weights (dropout does nothing at prediction), then a softmax if asked."""
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    backbone = onnx.load_from_string(saved.backbone_onnx)
    linear = saved.model.head[-1]
    output = "probabilities" if softmax else "logits"
    nodes = [helper.make_node("Gemm", ["features", "imageclf_head_weight", "imageclf_head_bias"], ["logits"], transB=1)]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [output], axis=1))
    head = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", linear.in_features])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", linear.out_features])],
        [
            numpy_helper.from_array(linear.weight.detach().numpy(), "imageclf_head_weight"),
            numpy_helper.from_array(linear.bias.detach().numpy(), "imageclf_head_bias"),
        ],
    )
    head_model = helper.make_model(head, opset_imports=backbone.opset_import, ir_version=backbone.ir_version)
    return compose.merge_models(backbone, head_model, io_map=[(backbone.graph.output[0].name, "features")])


def onnx_export(saved: SavedModel, softmax: bool, precision: str, calibration: list[np.ndarray]) -> bytes:
    """The classifier as ONNX with its metadata, fp32 or int8.

    A model file that carries its backbone graph at `precision` is exported with that graph, so the export
    predicts exactly as evaluate did; otherwise PyTorch exports the model, and int8 is quantized on
    `calibration` (`runtimes.quantize_onnx`).
    """
    import onnx

    if carries_backbone(saved, precision):
        graph = head_on_backbone(saved, softmax)
    else:
        size = saved.preprocessing.image_size
        model = onnx_model(
            exported_module(saved, softmax),
            (1, 3, size, size),
            output_name="probabilities" if softmax else "logits",
            dynamic_batch=True,
        )
        if precision == "int8":
            model = quantize_onnx(model, calibration)
        graph = onnx.load_from_string(model)
    entry = graph.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = export_metadata(
        saved.name, saved.classes, saved.preprocessing, softmax, precision, saved.unknown_threshold
    )
    return graph.SerializeToString()


def write_onnx(saved: SavedModel, softmax: bool, precision: str, calibration: list[np.ndarray], target: Path) -> None:
    target.write_bytes(onnx_export(saved, softmax, precision, calibration))


def write_openvino(
    saved: SavedModel, softmax: bool, precision: str, calibration: list[np.ndarray], target: Path
) -> None:
    """OpenVINO IR (`target`, an .xml, and its .bin) converted from the fp32 ONNX graph, then quantized by NNCF."""
    import openvino

    source = target.with_suffix(".fp32.onnx")
    source.write_bytes(onnx_export(saved, softmax, "fp32", []))
    model = openvino.convert_model(str(source))
    source.unlink()
    if precision == "int8":
        model = quantize_openvino(model, calibration)
    metadata = export_metadata(
        saved.name, saved.classes, saved.preprocessing, softmax, precision, saved.unknown_threshold
    )
    model.set_rt_info(metadata, [METADATA_KEY])
    openvino.save_model(model, str(target), compress_to_fp16=False)


@dataclass(frozen=True)
class ExportFormat:
    """One `--format`: its file suffix, the runtime (`runtimes.BACKBONE_RUNTIMES`) it needs, and its writer, which
    puts the main file at the path it is given and any companion file beside it."""

    suffix: str
    runtime: str
    write: Callable[[SavedModel, bool, str, list[np.ndarray], Path], None]
    companions: tuple[str, ...] = ()


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat(".onnx", "onnxruntime", write_onnx),
    "openvino": ExportFormat(".xml", "openvino", write_openvino, companions=(".bin",)),
}


def calibration_batches(
    train_dir: Path, saved: SavedModel, seed: int, count: int = CALIBRATION_IMAGES
) -> list[np.ndarray]:
    """`count` images of the split's train folder picked by `seed`, preprocessed, in batches."""
    paths = [train_dir / record.path for record in read_manifest(train_dir)]
    chosen = [paths[index] for index in calibration_indices([content_digest(path) for path in paths], seed, count)]
    size = saved.preprocessing.image_size
    arrays = [saved.preprocessing(open_rgb(path, min_side=size)) for path in chosen]
    return [
        np.stack(arrays[start : start + CALIBRATION_BATCH_SIZE])
        for start in range(0, len(arrays), CALIBRATION_BATCH_SIZE)
    ]


@contextmanager
def staging_folder(target: Path) -> Iterator[Path]:
    """A hidden folder beside `target` for the files being written; removed whatever happens, and stale ones that
    a killed export left are removed first. The caller renames the finished files out of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def default_output(model_path: Path, export_format: ExportFormat, precision: str) -> Path:
    """`models/model.onnx` beside `models/model.pt`; `models/model-int8.onnx` for int8."""
    stem = model_path.stem if precision == "fp32" else f"{model_path.stem}-{precision}"
    return model_path.with_name(stem + export_format.suffix)


def export_command(
    model_path: Path,
    format_name: str,
    precision: str | None,
    softmax: bool,
    output: Path | None,
    train_dir: Path,
    seed: int | None,
) -> int:
    """Write the export and print where it is."""
    export_format = EXPORT_FORMATS[format_name]
    other = next(name for name in EXPORT_FORMATS if name != format_name)
    require_modules(
        BACKBONE_RUNTIMES[export_format.runtime], f"imageclf export --format {format_name}", f"or use --format {other}"
    )
    output = output or default_output(model_path, export_format, precision)
    if output.suffix != export_format.suffix:
        raise UserError(f"--output '{output}' must end in {export_format.suffix} for --format {format_name}")
    saved = load_model(model_path)
    precision = precision or saved.backbone_precision
    calibration = []
    if precision == "int8" and not (format_name == "onnx" and carries_backbone(saved, precision)):
        if seed is None:
            from imageclf.core.params import load_params

            seed = load_params().train.seed
        calibration = calibration_batches(train_dir, saved, seed)
    with staging_folder(output) as staging:
        export_format.write(saved, softmax, precision, calibration, staging / output.name)
        for suffix in (*export_format.companions, export_format.suffix):  # the main file last: it names the rest
            os.replace(staging / output.with_suffix(suffix).name, output.with_suffix(suffix))
    print(f"wrote {output} ({format_name}, {precision}, {'probabilities' if softmax else 'logits'}, {saved.classes})")
    return 0


def torch_predictor(saved: SavedModel) -> Predictor:
    """A model on PyTorch, for where ONNX Runtime is not installed: on CUDA or MPS when there is one."""
    device = select_device()
    model = saved.model.eval().to(device, memory_format=torch.channels_last)

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            images = torch.from_numpy(batch).to(device, memory_format=torch.channels_last)
            return model(images).float().softmax(dim=1).cpu().numpy()

    return Predictor(
        saved.name,
        saved.classes,
        saved.preprocessing,
        forward,
        outputs_probabilities=True,
        unknown_threshold=saved.unknown_threshold,
    )
