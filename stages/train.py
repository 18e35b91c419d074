"""Stage train: train `train.model` in `train.mode` (with `augment.online` where it trains on images); save the best
validation epoch and the per-epoch history.

Usage: python -m stages.train TRAIN_DIR VAL_DIR MODEL_PT METRICS_JSON DETAILS_JSON HISTORY_CSV CHECKPOINT TIME_JSON

METRICS_JSON (the headline), DETAILS_JSON and HISTORY_CSV are rewritten (atomically) after every epoch, so that
`dvc exp show` and `dvc plots show` follow a running experiment; at the end they hold the same bytes for the same
params and data. TIME_JSON gets the stage's wall seconds: a file of its own, as the time differs on every run.
CHECKPOINT is where the run keeps its state every `train.checkpoint_every` epochs; a run that was
killed resumes from it, and it is removed when training ends. On several GPUs or machines, start it with
`torchrun --nproc_per_node=N -m stages.train ...` (as a module: the file form would import the installed
package, not this checkout's): the processes share the work and the first writes the outputs.
"""

import importlib.util
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

from imageclf.core.config import load
from imageclf.core.device import process_group, rank
from imageclf.core.files import write_csv, write_json
from imageclf.core.program import exit_without_final_collection, exits_cleanly
from imageclf.data.params import AugmentParams, DataParams
from imageclf.inference.predictor import compiled_model_file
from imageclf.models.model_file import save_model
from imageclf.training.loop import EpochStats, FitResult
from imageclf.training.params import TrainParams
from imageclf.training.train import train_from_params


def write_progress(result: FitResult, metrics_path: Path, details_path: Path, history_path: Path) -> None:
    """The epochs so far: the history, the details, then the headline."""
    write_csv(history_path, [asdict(epoch) for epoch in result.history], [field.name for field in fields(EpochStats)])
    write_json(details_path, result.details())
    write_json(metrics_path, result.headline())


@exits_cleanly
def main(
    train_dir: str,
    val_dir: str,
    model_path: str,
    metrics_path: str,
    details_path: str,
    history_path: str,
    checkpoint_path: str,
    time_path: str,
) -> None:
    started = time.perf_counter()
    data, train, online = load(DataParams), load(TrainParams), load(AugmentParams).online
    progress = Path(metrics_path), Path(details_path), Path(history_path)

    def on_epoch(result: FitResult) -> None:
        write_progress(result, *progress)

    with process_group():
        saved_model, result = train_from_params(
            data, train, Path(train_dir), Path(val_dir), online, Path(checkpoint_path), on_epoch
        )
        writes_outputs = rank() == 0
    if not writes_outputs:
        return
    save_model(Path(model_path), saved_model)
    if importlib.util.find_spec("onnxruntime") is not None:
        compiled_model_file(Path(model_path))  # what evaluate and predict run, ready in the cache
    write_progress(result, *progress)
    write_json(Path(time_path), {"seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    exit_without_final_collection()
    main(*sys.argv[1:])
