"""Stage evaluate: score the model on the test split; write metrics, curves, pictures and the report.

Usage: python -m stages.evaluate MODEL_PT TEST_DIR TRAIN_HISTORY_CSV OUT_DIR
"""

import sys
from pathlib import Path

from imageclf.core.errors import exit_without_final_collection, exits_cleanly
from imageclf.core.params import load_params
from imageclf.evaluation.evaluate import evaluate


@exits_cleanly
def main(model_path: str, test_dir: str, history_path: str, out_dir: str) -> None:
    evaluate(Path(model_path), Path(test_dir), Path(history_path), Path(out_dir), load_params())


if __name__ == "__main__":
    exit_without_final_collection()
    main(*sys.argv[1:])
