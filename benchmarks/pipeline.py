"""Time `dvc repro` from scratch on a folder of photos, then after one head hyperparameter change; report the peak
memory of the largest stage, test and hold-out accuracy and prediction throughput.

Runs in a temporary copy of the project with an empty feature cache, so the working tree, its dvc.lock and your
cache stay as they are.

    python benchmarks/pipeline.py --raw-dir ../shared/data/animals --holdout ../shared/data/animals10-sample
    python benchmarks/pipeline.py -S data.image_size=192 -S augment.copies=2 --then train.dropout=0.2
    python benchmarks/pipeline.py -S train.mode=fromzero -S train.model=original --keep-metrics runs/original

`--predict-folder` (default: the 1,320 cat photos of ../shared/data/animals) and `--predict-photo` time the
`imageclf predict` command itself on the trained model, start-up included, as a user runs it. The photo (default:
the folder's first) is timed twice: copied on its own, as a user's photo, and in its class folder, where `predict`
takes the folder name as its label and also scores it.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from imageclf.core import paths
from imageclf.data.images import is_image_name
from imageclf.evaluation.metrics import labelled_scores
from imageclf.inference.photos import predict_folder
from imageclf.inference.predictor import load_predictor

PROJECT = Path(__file__).resolve().parent.parent


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


def repro_seconds(work: Path, environment: dict[str, str]) -> dict[str, float]:
    """Wall seconds of one `dvc repro`, as a user runs it: in all, and per stage from the moment DVC announces it
    ("Running stage 'train':") to the next announcement or the end (a stage's share includes DVC's own work on it)."""
    start = time.perf_counter()
    announced: list[tuple[str, float]] = []
    with subprocess.Popen(
        ["dvc", "repro"], cwd=work, env=environment, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as process:
        for line in process.stdout:
            if line.startswith("Running stage '"):
                announced.append((line.split("'")[1], time.perf_counter()))
    if process.returncode != 0:
        raise SystemExit(f"dvc repro failed in {work} (exit status {process.returncode})")
    end = time.perf_counter()
    ends = [moment for _, moment in announced[1:]] + [end]
    stages = {name: round(stop - begun, 1) for (name, begun), stop in zip(announced, ends, strict=True)}
    return {**stages, "total": round(end - start, 1)}


def largest_process_mb() -> int:
    """The resident memory of the largest process this one has waited for, at its peak: after `dvc repro`, the
    largest stage (its processes are DVC's children, and DVC is this one's)."""
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10))  # bytes on macOS, kilobytes on Linux


def holdout_scores(model_path: Path, folder: Path, tta: str) -> dict:
    """The scores of a labelled folder (the keys of metrics/evaluate.json), the photos flagged as none of the
    classes, and how many of its photos `predict` reads and classifies per second."""
    predictor = load_predictor(model_path)
    start = time.perf_counter()
    results, unreadable = predict_folder(predictor, folder, tta, 64, description="hold-out")
    seconds = time.perf_counter() - start
    images_per_second = round((len(results) + len(unreadable)) / seconds, 1)
    return {
        "holdout": labelled_scores(results, predictor.classes, unreadable=len(unreadable)),
        "holdout_unknown": sorted(str(result.path.name) for result in results if result.unknown_reason),
        "predict_images_per_second": images_per_second,
    }


def predict_seconds(work: Path, environment: dict[str, str], target: Path) -> float:
    """Wall seconds of `imageclf predict TARGET` with the copy's model, from process start to exit."""
    command = [sys.executable, "-c", "from imageclf.cli import main; main()", "predict", str(target.resolve())]
    start = time.perf_counter()
    subprocess.run([*command, "--model", "models/model.pt"], cwd=work, env=environment, check=True, capture_output=True)
    return round(time.perf_counter() - start, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw-dir", type=Path, default=PROJECT.parent / "shared/data/animals")
    parser.add_argument(
        "--holdout",
        type=Path,
        default=PROJECT.parent / "shared/data/animals10-sample",
        help="a labelled folder from another source, scored with the trained model",
    )
    parser.add_argument("--predict-folder", type=Path, default=PROJECT.parent / "shared/data/animals/cat")
    parser.add_argument("--predict-photo", type=Path, help="default: the first photo of --predict-folder")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--keep-metrics", type=Path, metavar="DIR", help="copy the run's metrics/ (its epoch history, plots) here"
    )
    parser.add_argument(
        "--then",
        default="train.lr=0.0005",
        metavar="KEY=VALUE",
        help="a change timed after the first run (default: a head hyperparameter, train.lr=0.0005)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imageclf-bench-") as temporary:
        work = Path(temporary)
        copy_project(work)
        params = set_params(work / "params.yaml", [f"data.raw_dir={args.raw_dir.resolve()}", *args.overrides])
        environment = {**os.environ, "IMAGECLF_FEATURE_CACHE": str(work / "feature-cache")}
        seconds = repro_seconds(work, environment)
        if args.keep_metrics:
            shutil.copytree(work / paths.METRICS_DIR, args.keep_metrics, dirs_exist_ok=True)
        details = work / paths.METRICS_DIR / paths.DETAILS_DIR
        evaluation = json.loads((details / paths.EVALUATE_METRICS).read_text())
        training = json.loads((details / paths.TRAIN_METRICS).read_text())
        split = json.loads((details / paths.SPLIT_METRICS).read_text())
        report = {
            "raw_dir": str(args.raw_dir),
            "overrides": args.overrides,
            "images": split["images"],
            "seconds": seconds,
            "largest_process_mb": largest_process_mb(),
            "val_accuracy": training["best"]["val_accuracy"],
            "best_epoch": training["best_epoch"],
            "epochs": training["epochs"],
            "training_precision": training["precision"],
            "test_accuracy": evaluation["accuracy"],
            "test_macro_f1": evaluation["macro_avg"]["f1"],
        }
        rates = work / "feature-cache" / "precision.json"  # train.amp's measurement on a CPU, if it made one
        if rates.is_file():
            report["precision_rates"] = list(json.loads(rates.read_text()).values())
        report["test_misses"] = evaluation["misses"]
        report["test_unknown"] = evaluation["unknown"]
        if "ood" in evaluation:  # -S evaluate.ood_images=FOLDER: its share flagged, per score and subfolder
            report["ood"] = evaluation["ood"]
        if args.holdout:
            report["holdout_folder"] = str(args.holdout)
            report |= holdout_scores(work / paths.MODEL_FILE, args.holdout, params["evaluate"]["tta"])
        if args.predict_folder and args.predict_folder.is_dir():
            photos = sorted(path for path in args.predict_folder.rglob("*") if path.is_file() and is_image_name(path))
            folder_seconds = predict_seconds(work, environment, args.predict_folder)
            photo = args.predict_photo or photos[0]
            alone = shutil.copy(photo, work / "one_photo.jpg")  # as a user's photo: no class folder, no scoring
            report["predict_folder"] = {
                "folder": str(args.predict_folder),
                "photos": len(photos),
                "seconds": folder_seconds,
                "images_per_second": round(len(photos) / folder_seconds, 1),
                "one_photo_seconds": predict_seconds(work, environment, Path(alone)),
                # in its class folder the photo is labelled, so predict also scores it
                "one_labelled_photo_seconds": predict_seconds(work, environment, photo),
            }
        if args.then:
            set_params(work / "params.yaml", [args.then])
            report["after_change"] = {"change": args.then, "seconds": repro_seconds(work, environment)}
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
