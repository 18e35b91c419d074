"""Stage evaluate: score the model on the test split; write metrics and the predictions for the confusion plot.

Usage: python stages/evaluate.py MODEL_PT TEST_DIR METRICS_JSON PREDICTIONS_CSV
"""

import sys
from pathlib import Path

from imageclf.data import ImageDataset
from imageclf.device import select_device
from imageclf.errors import exits_cleanly
from imageclf.files import write_csv, write_json
from imageclf.metrics import classification_metrics, predict_probabilities
from imageclf.models import load_model
from imageclf.params import load_params


@exits_cleanly
def main(model_path: str, test_dir: str, metrics_path: str, predictions_path: str) -> None:
    params = load_params()
    saved = load_model(Path(model_path))
    dataset = ImageDataset.from_manifest(Path(test_dir), saved.classes, saved.preprocessing)
    probabilities, labels = predict_probabilities(
        saved.model, dataset, params.evaluate.batch_size, select_device(), "evaluate"
    )
    actual = [saved.classes[index] for index in labels]
    predicted = [saved.classes[index] for index in probabilities.argmax(axis=1)]
    write_json(Path(metrics_path), classification_metrics(actual, predicted, saved.classes))
    rows = [
        {"path": source, "actual": true, "predicted": guess, "confidence": round(float(p.max()), 4)}
        for source, true, guess, p in zip(dataset.sources, actual, predicted, probabilities, strict=True)
    ]
    write_csv(Path(predictions_path), rows, ["path", "actual", "predicted", "confidence"])


if __name__ == "__main__":
    main(*sys.argv[1:])
