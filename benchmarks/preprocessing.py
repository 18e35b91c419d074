"""Accuracy and speed of each test-time preprocessing (evaluate.tta) with one trained model.

    python benchmarks/preprocessing.py --model models/model.pt --split data/split/test \\
        --folder ../shared/data/animals10-sample

--split is a split folder with a manifest (labels from it); --folder a labelled folder (class folders or
<class>_name.jpg files). Prints one JSON object per mode and data set: accuracy, misses and images per second.
"""

import argparse
import json
import time
from pathlib import Path

from imageclf.data.manifest import read_manifest
from imageclf.data.views import TTA
from imageclf.inference.photos import files_to_predict, label_from_path, predict_files
from imageclf.inference.predictor import load_predictor


def labelled_files(args: argparse.Namespace, classes: list[str]) -> dict[str, tuple[list[Path], list[str]]]:
    sets = {}
    for folder in args.split:
        records = read_manifest(folder)
        sets[str(folder)] = ([folder / record.path for record in records], [record.label for record in records])
    for folder in args.folder:
        found, _ = files_to_predict([folder])
        sets[str(folder)] = ([path for path, _ in found], [label_from_path(path, folder, classes) for path, _ in found])
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--split", type=Path, action="append", default=[], help="a split folder with a manifest")
    parser.add_argument("--folder", type=Path, action="append", default=[], help="a labelled image folder")
    parser.add_argument("--tta", nargs="+", choices=TTA, default=list(TTA))
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    predictor = load_predictor(args.model)
    for name, (paths, labels) in labelled_files(args, predictor.classes).items():
        for tta in args.tta:
            start = time.perf_counter()
            predictions = list(predict_files(predictor, paths, tta, args.batch_size, description=f"{tta} {name}"))
            seconds = time.perf_counter() - start
            predicted = [predictor.classes[prediction.probabilities.argmax()] for prediction in predictions]
            misses = [
                f"{path.name}: {label} -> {guess}"
                for path, label, guess in zip(paths, labels, predicted, strict=True)
                if label != guess
            ]
            report = {
                "data": name,
                "tta": tta,
                "images": len(paths),
                "accuracy": round(1 - len(misses) / len(paths), 4),
                "misses": misses,
                "images_per_second": round(len(paths) / seconds, 1),
            }
            print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
