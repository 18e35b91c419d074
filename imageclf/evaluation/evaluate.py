"""The evaluate stage's work: score the test split (and an optional labelled folder, and a folder of photos of none
of the classes), write metrics, plots (the misclassified photos with their heatmaps), report."""

from dataclasses import replace
from pathlib import Path

import numpy as np

from imageclf.backbone.frozen import FrozenBackbone
from imageclf.core import paths
from imageclf.core.errors import UserError, warn
from imageclf.core.files import write_csv, write_json
from imageclf.data.datasets import ImageDataset
from imageclf.data.images import open_rgb
from imageclf.data.manifest import read_manifest, unreadable_image
from imageclf.data.params import DataParams
from imageclf.evaluation.metrics import (
    classification_scores,
    confusion_matrices,
    labelled_scores,
    precision_recall_curves,
)
from imageclf.evaluation.ood import ood_scores
from imageclf.evaluation.params import EvaluateParams
from imageclf.evaluation.reports import (
    Miss,
    confusion_figure,
    plot_gallery,
    plot_precision_recall,
    plot_training_curves,
    save_figure,
    write_report,
)
from imageclf.inference.photos import predict_files, predict_folder
from imageclf.inference.predictor import PREDICTORS, Predictor, Scored, load_predictor
from imageclf.models.heatmap import heatmap
from imageclf.models.model_file import carried_backbone, load_model


def load_model_for(model_path: Path, classes: list[str]) -> Predictor:
    """The model file (or an export of it), refused with one line when it was trained for other classes than
    `data.classes`."""
    model = load_predictor(model_path)
    if model.classes != classes:
        raise UserError(
            f"model '{model_path}' was trained for classes {model.classes}, but data.classes is {classes}: "
            "retrain it with dvc repro"
        )
    return model


def reasons_of(names: tuple[str, ...], flags: np.ndarray) -> list[tuple[str, ...]]:
    """Each photo's flagging scores (a row of `flags`, one column per name)."""
    return [tuple(name for name, flag in zip(names, row, strict=True) if flag) for row in flags]


def unknown_scores(
    true: list[str], probabilities: np.ndarray, reasons: list[tuple[str, ...]], classes: list[str], model: Predictor
) -> dict:
    """How many photos the model calls none of the classes (all of them are of the classes, so these are mistakes
    of another kind), by which score (and what the detector leaves out), and the accuracy on the others; `accuracy`
    still counts every photo by its top class."""
    unknown = np.array([bool(reason) for reason in reasons], dtype=bool)
    correct = np.array(true) == np.array(classes)[probabilities.argmax(axis=1)]
    return {
        "unknown_thresholds": model.unknown_thresholds,
        "unknown_note": model.unknown_note,
        "unknown": int(unknown.sum()),
        "unknown_share": float(unknown.mean()),
        "unknown_by_score": {name: sum(name in reason for reason in reasons) for name in model.unknown_scores},
        "accepted_accuracy": float(correct[~unknown].mean()) if not unknown.all() else None,
    }


def score_test_images(model: Predictor, folder: Path, config: EvaluateParams) -> dict:
    """`classification_scores` on a labelled folder (class folders or `<class>_name.jpg` files); unreadable files are
    warned about and counted, a folder without labelled images is refused."""
    if not folder.is_dir():
        raise UserError(f"evaluate.test_images '{folder}' is not a folder: fix the path or set it to \"\"")
    results, unreadable = predict_folder(model, folder, config.tta, config.batch_size, description="test_images")
    for prediction in unreadable:
        warn(f"cannot read '{prediction.path}': {prediction.error}")
    scores = labelled_scores(results, model.classes, unreadable=len(unreadable))
    if scores is None:
        raise UserError(
            f"evaluate.test_images '{folder}' holds no labelled images: put them in class folders "
            f"({', '.join(model.classes)}) or name them <class>_*.jpg"
        )
    labelled = [result for result in results if result.true_label is not None]
    probabilities = np.array([[result.probabilities[label] for label in model.classes] for result in labelled])
    true = [result.true_label for result in labelled]
    reasons = [result.unknown_reason for result in labelled]
    return scores | unknown_scores(true, probabilities, reasons, model.classes, model)


def scored_test_split(model: Predictor, model_path: Path, test_dir: Path, config: EvaluateParams) -> Scored:
    """Each test photo's class probabilities and none-of-these scores and flags, in manifest order.

    A model file that carries the backbone graph its head was trained on (transfer learning on ONNX Runtime) gets
    the test photos' features from the feature cache, where the first evaluate with that graph put them: after a
    change to the head, only the head and the detector run again. Otherwise, and with test-time augmentation, the
    model runs on the photos.
    """
    carried = None
    if config.tta == "none" and model_path.suffix.lower() not in PREDICTORS:
        carried = carried_backbone(model_path)
    if carried is not None:
        dataset = ImageDataset.from_manifest(test_dir, model.classes, carried.preprocessing)
        frozen = FrozenBackbone.of_graph(carried.architecture, carried.graph, carried.precision, carried.preprocessing)
        features = frozen.features(dataset, "test").dataset.tensors[0].numpy()
        probabilities = carried.head.probabilities(features)
        if carried.unknown is None:
            return Scored(probabilities, np.zeros((len(features), 0), np.float32), np.zeros((len(features), 0), bool))
        outputs = carried.unknown.outputs(features)
        names = carried.unknown.score_names
        return Scored(
            probabilities,
            np.stack([outputs[f"unknown_score_{name}"] for name in names], axis=1),
            outputs["unknown_flags"],
        )
    images = [test_dir / record.path for record in read_manifest(test_dir)]
    predictions = list(predict_files(model, images, config.tta, config.batch_size, description="evaluate"))
    unreadable = [prediction for prediction in predictions if prediction.probabilities is None]
    if unreadable:
        raise unreadable_image(unreadable[0].path, unreadable[0].error)
    names, count = model.unknown_scores, len(predictions)
    return Scored(
        np.stack([prediction.probabilities for prediction in predictions]),
        np.array([[p.unknown_scores[name] for name in names] for p in predictions], np.float32).reshape(count, -1),
        np.array([[name in p.unknown_reason for name in names] for p in predictions], bool).reshape(count, -1),
    )


def gallery_heatmaps(model_path: Path, misses: list[Miss], classes: list[str]) -> list[Miss]:
    """The misses with the Grad-CAM heatmap of their predicted class over them, from the model file's PyTorch model;
    as they are for an exported model, which has none."""
    if not misses or model_path.suffix.lower() in PREDICTORS:
        return misses
    saved = load_model(model_path)
    size = saved.preprocessing.image_size
    return [
        replace(
            miss,
            heatmap=heatmap(
                saved.classifier,
                saved.architecture,
                open_rgb(miss.image, min_side=size),
                saved.preprocessing,
                classes.index(miss.predicted),
            ).overlay,
        )
        for miss in misses
    ]


def headline(scores: dict) -> dict:
    """What the metrics file shows of a scored set (`classification_scores` and `unknown_scores`): accuracy,
    macro-F1 and the share called none of the classes, and of `evaluate.ood_images` the share flagged; nothing for
    no set."""
    if not scores:
        return {}
    return {
        "accuracy": scores["accuracy"],
        "macro_f1": scores["macro_avg"]["f1"],
        "unknown_share": scores["unknown_share"],
    } | ({"ood_flagged": scores["ood"]["flagged"]} if "ood" in scores else {})


def write_scores(out_dir: Path, name: str, scores: dict) -> None:
    """The scores in full under `details/`, then their headline as the metrics file `name`."""
    write_json(out_dir / paths.DETAILS_DIR / name, scores)
    write_json(out_dir / name, headline(scores))


def evaluate(
    model_path: Path, test_dir: Path, history_path: Path, out_dir: Path, data: DataParams, config: EvaluateParams
) -> dict:
    """Write the metrics (headline and details), predictions, precision-recall curves, pictures and the report into
    `out_dir`."""
    classes = data.classes
    model = load_model_for(model_path, classes)
    records = read_manifest(test_dir)
    images = [test_dir / record.path for record in records]
    scored = scored_test_split(model, model_path, test_dir, config)
    probabilities = scored.probabilities
    reasons = reasons_of(model.unknown_scores, scored.flags)
    true = [record.label for record in records]
    predicted = [classes[index] for index in probabilities.argmax(axis=1)]

    metrics = classification_scores(true, probabilities, classes, [record.source for record in records])
    metrics |= unknown_scores(true, probabilities, reasons, classes, model)
    metrics["unknown_photos"] = [
        {"path": record.source, "true": actual, "predicted": guess, "unknown_reason": list(reason)}
        for record, actual, guess, reason in zip(records, true, predicted, reasons, strict=True)
        if reason
    ]
    if config.ood_images:
        metrics["ood"] = ood_scores(model, Path(config.ood_images), scored, config)
    write_scores(out_dir, paths.EVALUATE_METRICS, metrics)
    write_csv(
        out_dir / paths.TEST_PREDICTIONS,
        [
            {
                "path": record.source,
                "actual": actual,
                "predicted": guess,
                "confidence": round(float(row.max()), 4),
                "unknown": bool(reason),
            }
            for record, actual, guess, row, reason in zip(records, true, predicted, probabilities, reasons, strict=True)
        ],
        ["path", "actual", "predicted", "confidence", "unknown"],
    )
    curves = precision_recall_curves(true, probabilities, classes)
    for label, rows in curves.items():
        write_json(out_dir / paths.PRECISION_RECALL_DIR / f"{label}.json", rows)

    test_images = score_test_images(model, Path(config.test_images), config) if config.test_images else {}
    write_scores(out_dir, paths.TEST_IMAGES_METRICS, test_images)

    plots = out_dir / paths.PLOTS_DIR
    pictures = {
        "Confusion matrix": plots / paths.CONFUSION_MATRIX,
        "Misclassified test images": plots / paths.MISCLASSIFIED,
        "Precision-recall curves": plots / paths.PRECISION_RECALL,
        "Training curves": plots / paths.TRAINING_CURVES,
    }
    save_figure(confusion_figure(*confusion_matrices(true, predicted, classes), classes), pictures["Confusion matrix"])
    image_of = {record.source: image for record, image in zip(records, images, strict=True)}
    misses = [
        Miss(image_of[miss["path"]], Path(miss["path"]).name, miss["true"], miss["predicted"], miss["confidence"])
        for miss in metrics["misses"][: config.gallery_size]
    ]
    plot_gallery(gallery_heatmaps(model_path, misses, classes), len(records), pictures["Misclassified test images"])
    average_precision = {label: row["average_precision"] for label, row in metrics["per_class"].items()}
    plot_precision_recall(curves, average_precision, pictures["Precision-recall curves"])
    plot_training_curves(history_path, pictures["Training curves"])
    write_report(out_dir / paths.REPORT, config.test_images, metrics, test_images, pictures)
    return metrics
