"""Which score flags photos of none of the classes, measured on the default model of three splits.

    python benchmarks/unknown_scores.py --work /tmp/unknown-scores
    python benchmarks/unknown_scores.py --work /tmp/unknown-scores --bank-sizes 0 1024 512

For each `--seeds` split seed, a copy of the project with `data.raw_dir: --raw-dir` and that `split.seed` runs
`dvc repro train` (the default model: int8 ONNX Runtime Lite0 at 256 px, a linear head); a `--work` folder keeps the
copies, and a later run reuses every seed whose model is there. Features come from the model file's own backbone
graph through the feature store (`backbone.frozen.FrozenBackbone.of_graph`), as evaluate gets them.

Every score's threshold is chosen on val. Reported per score and for combinations (each score at its part of a
1 % val budget): the share flagged of val, test, the `--holdout` photos (Animals-10), `--ood`'s other_animals (near)
and not_animals (far), and images from elsewhere (scikit-learn's and, when scikit-image is importable, its sample
pictures; matplotlib's two sample photos; generated plain colours, noise and text). Prints one JSON line per seed
and method, then a Markdown table (ranges over the seeds) and the images from elsewhere that the shipped method
lets through. `--bank-sizes`: the shipped method with that many training photos kept (0: all), and how many flags
change against all of them in float32.
"""

import argparse
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from imageclf.backbone.frozen import FrozenBackbone
from imageclf.data.datasets import ImageDataset
from imageclf.data.images import Preprocessing
from imageclf.models.architectures import model_spec
from imageclf.models.classifier import HEAD_LINEAR
from imageclf.models.model_file import read_model_file
from imageclf.models.unknown import UnknownDetector, calibrated_threshold, imagenet_classifier, normalised, softmax

sys.path.insert(0, str(Path(__file__).parent))
from pipeline import copy_project
from unknown import generated_pictures, sklearn_pictures

PROJECT = Path(__file__).resolve().parent.parent
SETS = ("val", "test", "holdout", "near", "far", "elsewhere")
SKIMAGE_FILES = [
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chessboard_RGB.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "color.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "logo.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "phantom.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
]
MATPLOTLIB_FILES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
Scores = dict[str, np.ndarray]  # per set


def trained_project(work: Path, seed: int, raw_dir: Path) -> Path:
    """A copy of the project with `split.seed: seed` whose `dvc repro train` has run (reused when it has)."""
    project = work / f"seed{seed}"
    if (project / "models/model.pt").is_file():
        return project
    shutil.rmtree(project, ignore_errors=True)
    copy_project(project)  # a fresh git repository of this checkout's files
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["raw_dir"], params["split"]["seed"] = str(raw_dir.resolve()), seed
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["dvc", "repro", "train"], cwd=project, check=True, stdout=subprocess.DEVNULL)
    return project


def elsewhere_folder(work: Path) -> Path:
    """Images from no data set of this project, as PNG files in `<work>/elsewhere/<source>/`."""
    folder = work / "elsewhere"
    pictures = {"generated": generated_pictures(), "sklearn": sklearn_pictures()}
    for package, names in (("skimage", SKIMAGE_FILES), ("matplotlib", MATPLOTLIB_FILES)):
        spec = importlib.util.find_spec(package)
        if spec is not None:
            data = Path(spec.origin).parent / ("data" if package == "skimage" else "mpl-data/sample_data")
            pictures[package] = {name: (data / name).read_bytes() for name in names if (data / name).is_file()}
    for source, images in pictures.items():
        (folder / source).mkdir(parents=True, exist_ok=True)
        for name, content in images.items():
            (folder / source / f"{Path(name.replace(' ', '_')).stem}.png").write_bytes(content)
    return folder


def features_of(project: Path, holdout: Path, ood: Path, elsewhere: Path) -> tuple[dict, dict]:
    """Backbone features (and labels, and file names) of every set, from the model file's backbone graph."""
    saved = read_model_file(project / "models/model.pt")
    preprocessing = Preprocessing(saved["image_size"], tuple(saved["mean"]), tuple(saved["std"]))
    graph = saved["backbone_onnx"].numpy().tobytes()
    frozen = FrozenBackbone.of_graph(saved["model"], graph, saved["backbone_precision"], preprocessing)
    classes = list(saved["classes"])
    datasets = {
        "train": ImageDataset.from_manifest(project / "data/augmented", classes, preprocessing),
        "val": ImageDataset.from_manifest(project / "data/split/val", classes, preprocessing),
        "test": ImageDataset.from_manifest(project / "data/split/test", classes, preprocessing),
        "holdout": ImageDataset.from_folder(holdout, classes, preprocessing),
        "ood": ImageDataset.from_folder(ood, ["other_animals", "not_animals"], preprocessing),
        "elsewhere": ImageDataset.from_folder(
            elsewhere, sorted(path.name for path in elsewhere.iterdir()), preprocessing
        ),
    }
    features, labels = {}, {}
    for name, dataset in datasets.items():
        vectors, targets = frozen.features(dataset, name).dataset.tensors
        features[name], labels[name] = vectors.numpy(), targets.numpy()
    ood_labels = labels.pop("ood")
    ood_features = features.pop("ood")
    features["near"], features["far"] = ood_features[ood_labels == 0], ood_features[ood_labels == 1]
    names = [str(path.relative_to(elsewhere)) for path in datasets["elsewhere"].paths]
    head = (saved["state_dict"][f"{HEAD_LINEAR}.weight"].numpy(), saved["state_dict"][f"{HEAD_LINEAR}.bias"].numpy())
    return features, {"labels": labels, "classes": classes, "head": head, "names": names, "model": saved["model"]}


def mahalanobis(train: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Minus the smallest Mahalanobis distance to a class mean of the normalised features (shared covariance,
    shrunk by 10 % towards its mean variance: 1,280 dimensions from 3,000 photos)."""
    unit = normalised(train)
    means = np.stack([unit[labels == label].mean(axis=0) for label in np.unique(labels)])
    centred = unit - means[labels]
    covariance = centred.T @ centred / len(unit)
    shrunk = 0.9 * covariance + 0.1 * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    precision = np.linalg.pinv(shrunk)

    def score(features: np.ndarray) -> np.ndarray:
        unit_features = normalised(features)
        distances = [np.einsum("ij,jk,ik->i", unit_features - mean, precision, unit_features - mean) for mean in means]
        return -np.min(distances, axis=0)

    return score


def all_scores(features: dict, context: dict, imagenet: tuple[np.ndarray, np.ndarray]) -> dict[str, Scores]:
    """Every candidate score of every set, higher meaning more like the training photos."""
    train, labels = features["train"], context["labels"]["train"]
    weight, bias = context["head"]
    detector = UnknownDetector.fit(train, labels, context["classes"], features["val"], imagenet)
    scores: dict[str, Scores] = {
        "max_softmax": {name: softmax(features[name] @ weight.T + bias).max(axis=1) for name in SETS},
        "imagenet": {name: detector.scores(features[name])["imagenet"] for name in SETS},
    }
    bank = normalised(train)
    for name in SETS:
        nearest = -np.sort(-(normalised(features[name]) @ bank.T), axis=1)[:, :10]
        for k in range(1, 11):
            scores.setdefault(f"knn k={k}", {})[name] = nearest[:, k - 1]
    distance = mahalanobis(train, labels)
    scores["mahalanobis"] = {name: distance(features[name]) for name in SETS}
    return scores


def flagged(scores: dict[str, Scores], method: list[str], share: float) -> dict[str, np.ndarray]:
    """Per set, whether each image is flagged by any score of `method`, each at `share / len(method)` of val."""
    part = share / len(method)
    thresholds = {name: calibrated_threshold(scores[name]["val"], part) for name in method}
    return {s: np.any([scores[name][s] < thresholds[name] for name in method], axis=0) for s in SETS}


def flagged_jointly(scores: dict[str, Scores], method: list[str], share: float) -> dict[str, np.ndarray]:
    """Like `flagged`, but the scores share the whole budget: in turns, each score's threshold rises past its next
    val photo while all of them together still flag at most floor(share × n) val photos."""
    val = {name: np.sort(scores[name]["val"]) for name in method}
    budget = math.floor(round(share * len(val[method[0]]), 9))

    def thresholds(counts: dict[str, int]) -> dict[str, float]:
        return {name: val[name][count] - 1e-5 * max(1.0, abs(val[name][count])) for name, count in counts.items()}

    def union(counts: dict[str, int]) -> int:
        limits = thresholds(counts)
        return int(np.any([scores[name]["val"] < limits[name] for name in method], axis=0).sum())

    counts, rising = dict.fromkeys(method, 0), True
    while rising:
        rising = False
        for name in method:
            trial = counts | {name: counts[name] + 1}
            if union(trial) <= budget:
                counts, rising = trial, True
    limits = thresholds(counts)
    return {s: np.any([scores[name][s] < limits[name] for name in method], axis=0) for s in SETS}


METHODS = {
    **{name: [name] for name in ["max_softmax", "imagenet", "mahalanobis"] + [f"knn k={k}" for k in range(1, 11)]},
    "knn k=5 + imagenet (shipped)": ["knn k=5", "imagenet"],
    "knn k=3 + imagenet": ["knn k=3", "imagenet"],
    "knn k=5 + max_softmax": ["knn k=5", "max_softmax"],
    "mahalanobis + imagenet": ["mahalanobis", "imagenet"],
    "knn k=5 + imagenet + max_softmax": ["knn k=5", "imagenet", "max_softmax"],
    "knn k=5 + imagenet, sharing 1 % jointly": ["knn k=5", "imagenet"],
}


def meets_targets(counts: dict[str, list[int]]) -> bool:
    share = {name: flagged_count / total for name, (flagged_count, total) in counts.items()}
    return (
        share["val"] <= 0.01
        and share["test"] <= 0.01
        and counts["holdout"][0] <= 1
        and share["near"] >= 0.85
        and share["far"] >= 0.95
    )


def table(results: dict[str, list[dict]]) -> str:
    """Markdown: per method, the range over seeds of each set's flagged share (the holdout as counts)."""
    lines = [
        "| method | val | test | Animals-10 (of 93) | other animals (near) | not animals (far) | elsewhere | "
        "seeds meeting the targets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, runs in results.items():
        cells = []
        for name in SETS:
            if name == "holdout":
                cells.append(" / ".join(str(run[name][0]) for run in runs))
                continue
            shares = [100 * run[name][0] / run[name][1] for run in runs]
            low, high = min(shares), max(shares)
            cells.append(f"{low:.1f} %" if math.isclose(low, high) else f"{low:.1f}–{high:.1f} %")
        lines.append(f"| {method} | {' | '.join(cells)} | {sum(map(meets_targets, runs))} of {len(runs)} |")
    return "\n".join(lines)


def bank_effect(features: dict, context: dict, imagenet: tuple, sizes: list[int]) -> list[dict]:
    """The shipped method with a smaller float16 bank: flags changed against all training photos in float32."""
    train, labels, classes = features["train"], context["labels"]["train"], context["classes"]
    reference = UnknownDetector.fit(train, labels, classes, features["val"], imagenet)
    full = UnknownDetector(normalised(train), reference.k, reference.imagenet, {})
    full = full.calibrated(features["val"])
    rows = []
    for size in sizes:
        detector = UnknownDetector.fit(train, labels, classes, features["val"], imagenet, bank_size=size or None)
        row = {"bank": len(detector.bank), "megabytes": round(detector.nbytes() / 1e6, 2)}
        for name in SETS:
            ours, theirs = detector.flags(features[name]).unknown, full.flags(features[name]).unknown
            row[name] = f"{int(ours.sum())}/{len(ours)}"
            row[f"{name}_changed"] = int((ours != theirs).sum())
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="where the project copies and images are kept")
    parser.add_argument("--raw-dir", type=Path, default=PROJECT.parent / "shared/data/animals")
    parser.add_argument("--holdout", type=Path, default=PROJECT.parent / "shared/data/animals10-sample")
    parser.add_argument("--ood", type=Path, default=PROJECT.parent / "shared/data/ood-dev")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--share", type=float, default=0.01, help="val share all scores of a method may flag")
    parser.add_argument("--bank-sizes", type=int, nargs="*", default=[], help="0: every training photo")
    args = parser.parse_args()

    elsewhere = elsewhere_folder(args.work)
    results: dict[str, list[dict]] = {method: [] for method in METHODS}
    missed: dict[str, int] = {}
    for seed in args.seeds:
        project = trained_project(args.work, seed, args.raw_dir)
        features, context = features_of(project, args.holdout, args.ood, elsewhere)
        imagenet = imagenet_classifier(model_spec(context["model"]).imagenet_weights())
        scores = all_scores(features, context, imagenet)
        for method, parts in METHODS.items():
            flags = (flagged_jointly if "jointly" in method else flagged)(scores, parts, args.share)
            counts = {name: [int(flags[name].sum()), len(flags[name])] for name in SETS}
            results[method].append(counts)
            print(json.dumps({"seed": seed, "method": method} | counts))
            if method.endswith("(shipped)"):
                for name, flag in zip(context["names"], flags["elsewhere"], strict=True):
                    missed[name] = missed.get(name, 0) + (not flag)
        for row in bank_effect(features, context, imagenet, args.bank_sizes):
            print(json.dumps({"seed": seed, "bank_effect": row}))
    print(table(results))
    print("elsewhere, let through by the shipped method (seeds):", {name: n for name, n in missed.items() if n})


if __name__ == "__main__":
    main()
