"""Time `dvc repro` from scratch on a folder of photos and report test and hold-out accuracy.

Runs in a temporary copy of the project, so the working tree and its dvc.lock stay as they are.

    python benchmarks/pipeline.py --raw-dir ../shared/data/animals --holdout ../shared/data/animals10-sample
    python benchmarks/pipeline.py -S data.image_size=192 -S augment.copies=2
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from imageclf.data import find_images
from imageclf.models import load_model
from imageclf.predict import predict_files

PROJECT = Path(__file__).resolve().parent.parent
STAGES = ("split", "augment", "train", "evaluate")


def copy_project(destination: Path) -> None:
    """Copy the project's tracked and untracked-but-not-ignored files, then make it a fresh git + DVC repo."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    for name in filter(None, listed):
        source = PROJECT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    (destination / "dvc.lock").unlink(missing_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True)


def set_params(params_file: Path, overrides: list[str]) -> dict:
    params = yaml.safe_load(params_file.read_text())
    for override in overrides:
        key, value = override.split("=", 1)
        *sections, name = key.split(".")
        target = params
        for section in sections:
            target = target[section]
        target[name] = yaml.safe_load(value)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def holdout_accuracy(model_path: Path, folder: Path, classes: list[str], tta: str) -> float:
    saved = load_model(model_path)
    found = find_images(folder, classes)
    paths = [path for label in classes for path in found[label]]
    labels = [label for label in classes for _ in found[label]]
    predictions = predict_files(saved, paths, tta, 64, description="hold-out")
    return sum(classes[p.probabilities.argmax()] == label for p, label in zip(predictions, labels, strict=True)) / len(
        paths
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw-dir", type=Path, default=PROJECT.parent / "shared/data/animals")
    parser.add_argument(
        "--holdout",
        type=Path,
        default=PROJECT.parent / "shared/data/animals10-sample",
        help="a labelled folder from another source, scored with the trained model",
    )
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imageclf-bench-") as temporary:
        work = Path(temporary)
        copy_project(work)
        params = set_params(work / "params.yaml", [f"data.raw_dir={args.raw_dir.resolve()}", *args.overrides])
        seconds = {}
        for stage in STAGES:
            start = time.perf_counter()
            subprocess.run(["dvc", "repro", "--single-item", stage], cwd=work, check=True, stdout=subprocess.DEVNULL)
            seconds[stage] = round(time.perf_counter() - start, 1)
        evaluation = json.loads((work / "metrics/evaluate.json").read_text())
        training = json.loads((work / "metrics/train.json").read_text())
        split = json.loads((work / "metrics/split.json").read_text())
        report = {
            "raw_dir": str(args.raw_dir),
            "overrides": args.overrides,
            "images": split["images"],
            "seconds": {**seconds, "total": round(sum(seconds.values()), 1)},
            "val_accuracy": training["best"]["val_accuracy"],
            "best_epoch": training["best_epoch"],
            "test_accuracy": evaluation["accuracy"],
            "test_macro_f1": evaluation["macro_avg"]["f1"],
        }
        if args.holdout:
            report["holdout"] = str(args.holdout)
            report["holdout_accuracy"] = holdout_accuracy(
                work / "models/model.pt", args.holdout, params["data"]["classes"], params["evaluate"]["tta"]
            )
        misses = [
            line
            for line in (work / "metrics/test_predictions.csv").read_text().splitlines()[1:]
            if line.split(",")[1] != line.split(",")[2]
        ]
        report["test_misses"] = misses
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
