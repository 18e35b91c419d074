"""Stage evaluate: score the model on the test split; write metrics, curves, pictures and the report.

Usage: python -m stages.evaluate MODEL_PT TEST_DIR TRAIN_HISTORY_CSV OUT_DIR
"""

import sys
from pathlib import Path

from imageclf.core.config import load
from imageclf.core.program import exit_without_final_collection, exits_cleanly
from imageclf.data.params import DataParams
from imageclf.evaluation.evaluate import evaluate
from imageclf.evaluation.params import EvaluateParams


@exits_cleanly
def main(model_path: str, test_dir: str, history_path: str, out_dir: str) -> None:
    evaluate(
        Path(model_path), Path(test_dir), Path(history_path), Path(out_dir), load(DataParams), load(EvaluateParams)
    )


if __name__ == "__main__":
    exit_without_final_collection()
    main(*sys.argv[1:])
