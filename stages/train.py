"""Stage train: train `train.model` in `train.mode`; save the best validation epoch and the per-epoch history.

Usage: python -m stages.train TRAIN_DIR VAL_DIR MODEL_PT METRICS_JSON HISTORY_CSV CHECKPOINT

CHECKPOINT is where the run keeps its state every `train.checkpoint_every` epochs; a run that was
killed resumes from it, and it is removed when training ends. On several GPUs or machines, start it with
`torchrun --nproc_per_node=N -m stages.train ...` (as a module: the file form would import the installed
package, not this checkout's): the processes share the work and the first writes the outputs.
"""

import sys
from dataclasses import asdict, fields
from pathlib import Path

from imageclf.device import process_group, rank
from imageclf.errors import exits_cleanly
from imageclf.files import write_csv, write_json
from imageclf.models import save_model
from imageclf.params import load_params
from imageclf.training import EpochStats, train_from_params


@exits_cleanly
def main(
    train_dir: str, val_dir: str, model_path: str, metrics_path: str, history_path: str, checkpoint_path: str
) -> None:
    params = load_params()
    with process_group():
        saved_model, result = train_from_params(params, Path(train_dir), Path(val_dir), Path(checkpoint_path))
        writes_outputs = rank() == 0
    if not writes_outputs:
        return
    save_model(Path(model_path), saved_model)
    write_json(Path(metrics_path), result.summary())
    write_csv(
        Path(history_path), [asdict(epoch) for epoch in result.history], [field.name for field in fields(EpochStats)]
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
