"""`imageclf export`: write the model as ONNX or OpenVINO IR for other programs: the whole classifier (backbone and
head, softmax if asked) with the backbone's features and the none-of-these detector's flags and scores as further
outputs, and its class names, input size, mean and std, and the detector's scores, thresholds and reasons inside the
file as JSON under the key 'imageclf' (ONNX metadata_props, OpenVINO rt_info).

The batch size is free. A model trained on ONNX Runtime features carries that backbone graph (fp32 or int8), and its
ONNX export at that precision (the default) is that graph with the head on top: it predicts exactly as evaluate did
(`onnx_graph.classifier_onnx`). Otherwise int8 is calibrated on training images of the split picked by a seed
(`calibration.calibration_indices`), so the same model, images and seed give the same file. The files are written
in a hidden folder beside the target and renamed into place: an interrupted export leaves nothing half-written.
"""

import argparse
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imageclf.backbone.calibration import CALIBRATION_IMAGES, calibration_indices
from imageclf.backbone.runtimes import BACKBONE_RUNTIMES, require_modules
from imageclf.core import paths
from imageclf.core.arguments import add_model_file_argument
from imageclf.core.config import load
from imageclf.core.errors import UserError
from imageclf.data.images import open_rgb
from imageclf.data.manifest import content_digest, read_manifest
from imageclf.inference.onnx_graph import METADATA_KEY, carries_backbone, classifier_onnx, saved_metadata
from imageclf.models.model_file import SavedModel, load_model

CALIBRATION_BATCH_SIZE = 32


def write_onnx(saved: SavedModel, softmax: bool, precision: str, calibration: list[np.ndarray], target: Path) -> None:
    target.write_bytes(classifier_onnx(saved, softmax, precision, calibration))


def write_openvino(
    saved: SavedModel, softmax: bool, precision: str, calibration: list[np.ndarray], target: Path
) -> None:
    """OpenVINO IR (`target`, an .xml, and its .bin) converted from the fp32 ONNX graph, then quantized by NNCF (the
    detector's nodes stay float32)."""
    import openvino

    source = target.with_suffix(".fp32.onnx")
    source.write_bytes(classifier_onnx(saved, softmax, "fp32", []))
    model = openvino.convert_model(str(source))
    source.unlink()
    quantize = BACKBONE_RUNTIMES["openvino"].quantizers[precision]
    if quantize is not None:
        model = quantize(model, calibration)
    model.set_rt_info(saved_metadata(saved, softmax, precision), [METADATA_KEY])
    openvino.save_model(model, str(target), compress_to_fp16=False)


@dataclass(frozen=True)
class ExportFormat:
    """One `--format`: its file suffix, the runtime (`runtimes.BACKBONE_RUNTIMES`) it needs, and its writer, which
    puts the main file at the path it is given and any companion file beside it. `keeps_carried_graph`: it writes
    the backbone graph a model file carries as it is, so needs no calibration at that graph's precision."""

    suffix: str
    runtime: str
    write: Callable[[SavedModel, bool, str, list[np.ndarray], Path], None]
    companions: tuple[str, ...] = ()
    keeps_carried_graph: bool = False


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat(".onnx", "onnxruntime", write_onnx, keeps_carried_graph=True),
    "openvino": ExportFormat(".xml", "openvino", write_openvino, companions=(".bin",)),
}
PRECISIONS = tuple(dict.fromkeys(p for f in EXPORT_FORMATS.values() for p in BACKBONE_RUNTIMES[f.runtime].precisions))


def calibration_batches(
    train_dir: Path, saved: SavedModel, seed: int, count: int = CALIBRATION_IMAGES
) -> list[np.ndarray]:
    """`count` images of the split's train folder picked by `seed`, preprocessed, in batches."""
    images = [train_dir / record.path for record in read_manifest(train_dir)]
    chosen = [images[index] for index in calibration_indices([content_digest(path) for path in images], seed, count)]
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
    """`models/model.onnx` beside `models/model.pt`; `models/model-int8.onnx` for a quantized precision."""
    calibrated = BACKBONE_RUNTIMES[export_format.runtime].calibrates(precision)
    stem = f"{model_path.stem}-{precision}" if calibrated else model_path.stem
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
    runtime = BACKBONE_RUNTIMES[export_format.runtime]
    other = next(name for name in EXPORT_FORMATS if name != format_name)
    require_modules(runtime, f"imageclf export --format {format_name}", f"or use --format {other}")
    saved = load_model(model_path)
    precision = precision or saved.backbone_precision
    output = output or default_output(model_path, export_format, precision)
    if output.suffix != export_format.suffix:
        raise UserError(f"--output '{output}' must end in {export_format.suffix} for --format {format_name}")
    calibration = []
    if runtime.calibrates(precision) and not (export_format.keeps_carried_graph and carries_backbone(saved, precision)):
        if seed is None:
            from imageclf.training.params import TrainParams

            seed = load(TrainParams).seed
        calibration = calibration_batches(train_dir, saved, seed)
    with staging_folder(output) as staging:
        export_format.write(saved, softmax, precision, calibration, staging / output.name)
        for suffix in (*export_format.companions, export_format.suffix):  # the main file last: it names the rest
            os.replace(staging / output.with_suffix(suffix).name, output.with_suffix(suffix))
    scores = (
        f"none-of-these scores: {', '.join(saved.unknown.score_names)}" if saved.unknown else "no none-of-these scores"
    )
    outputs = "probabilities" if softmax else "logits"
    print(f"wrote {output} ({format_name}, {precision}, {outputs}, {saved.classes}, {scores})")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    add_model_file_argument(parser)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="default: the backbone's precision in training (train.backbone_precision), whose graph the model file "
        "carries, so the export predicts as evaluate did; fp32 for a model without one",
    )
    parser.add_argument("--softmax", action="store_true", help="output probabilities instead of logits")
    parser.add_argument(
        "--output", type=Path, metavar="PATH", help="default: beside the model, model.onnx, model.xml, model-int8.*"
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        default=paths.TRAIN_DIR,
        metavar="DIR",
        help=f"int8: the split's train folder whose images calibrate (default: {paths.TRAIN_DIR})",
    )
    parser.add_argument(
        "--seed", type=int, help="int8: picks the calibration images (default: train.seed of params.yaml)"
    )


def run(args: argparse.Namespace) -> int:
    return export_command(
        args.model, args.format, args.precision, args.softmax, args.output, args.calibration, args.seed
    )
