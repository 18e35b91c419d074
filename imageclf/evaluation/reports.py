"""Pictures (matplotlib PNGs) and the Markdown report of an evaluation."""

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageOps

from imageclf.core.config import flat_params
from imageclf.core.files import write_atomic
from imageclf.data.images import open_rgb

THUMBNAIL_SIDE = 160
GALLERY_COLUMNS = 6
HISTORY_PANELS = (
    ("loss", ("train_loss", "val_loss")),
    ("accuracy", ("train_accuracy", "val_accuracy")),
    ("learning rate", ("lr",)),
)


@dataclass(frozen=True)
class Miss:
    """A misclassified image: the file to show, its true and predicted class, the model's confidence and, when
    there is one, the photo as the model saw it with the heatmap of the predicted class over it."""

    image: Path
    name: str
    true: str
    predicted: str
    confidence: float
    heatmap: Image.Image | None = None


def save_figure(figure: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    write_atomic(path, buffer.getvalue())


def confusion_figure(counts: np.ndarray, normalised: np.ndarray, classes: list[str]) -> Figure:
    """The confusion matrix twice, true classes in rows and predicted ones in columns: counts, and the share of each
    true class (rows sum to 1). Both panels are coloured by that share."""
    figure = Figure(layout="constrained", figsize=(4.2 * 2 + 1, 4.2))
    for axes, matrix, title in zip(
        figure.subplots(1, 2), (counts, normalised), ("counts", "normalised per true class"), strict=True
    ):
        axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        for row in range(len(classes)):
            for column in range(len(classes)):
                text = f"{matrix[row, column]:.2f}" if matrix is normalised else str(matrix[row, column])
                colour = "white" if normalised[row, column] > 0.5 else "black"
                axes.text(column, row, text, ha="center", va="center", color=colour)
        axes.set(title=f"Confusion matrix, {title}", xlabel="predicted", ylabel="true")
        axes.set_xticks(range(len(classes)), classes)
        axes.set_yticks(range(len(classes)), classes)
    return figure


def thumbnail(path: Path) -> Image.Image:
    return ImageOps.pad(open_rgb(path, min_side=THUMBNAIL_SIDE), (THUMBNAIL_SIDE, THUMBNAIL_SIDE), color="white")


def plot_gallery(misses: list[Miss], total: int, path: Path) -> None:
    """Thumbnails of the misclassified images (with their heatmaps, when they have them) with true class, predicted
    class and confidence."""
    if not misses:
        figure = Figure(layout="constrained", figsize=(6, 1))
        figure.text(0.5, 0.5, f"No misclassified images among {total}.", ha="center", va="center", fontsize=14)
        save_figure(figure, path)
        return
    columns = min(GALLERY_COLUMNS, len(misses))
    rows = -(-len(misses) // columns)
    figure = Figure(layout="constrained", figsize=(2.2 * columns, 2.6 * rows))
    looked = ", each with where the network looked for the predicted class (Grad-CAM)" if misses[0].heatmap else ""
    figure.suptitle(f"Misclassified: {len(misses)} shown of {total} images, most confident first{looked}")
    grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    for axes in grid:
        axes.axis("off")
    for axes, miss in zip(grid, misses, strict=False):
        axes.imshow(thumbnail(miss.image) if miss.heatmap is None else miss.heatmap)
        axes.set_title(f"true {miss.true}\npredicted {miss.predicted} ({miss.confidence:.2f})", fontsize=9)
        axes.text(0.5, -0.04, miss.name[:28], transform=axes.transAxes, ha="center", va="top", fontsize=6)
    save_figure(figure, path)


def read_history(path: Path) -> dict[str, list[float]]:
    """The columns of a training history CSV as float lists."""
    with Path(path).open(newline="") as file:
        rows = list(csv.DictReader(file))
    return {column: [float(row[column]) for row in rows] for column in (rows[0] if rows else {})}


def plot_training_curves(history_path: Path, path: Path) -> None:
    """Loss and accuracy per epoch for training and validation (and the learning rate, when recorded)."""
    history = read_history(history_path)
    panels = [(title, columns) for title, columns in HISTORY_PANELS if all(column in history for column in columns)]
    figure = Figure(layout="constrained", figsize=(4.2 * len(panels), 3.4))
    for axes, (title, columns) in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels, strict=True):
        for column in columns:
            axes.plot(history["epoch"], history[column], marker="o", markersize=3, label=column)
        axes.set(title=f"{title} per epoch", xlabel="epoch", ylabel=title)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    save_figure(figure, path)


def plot_precision_recall(curves: dict[str, list[dict]], average_precision: dict[str, float], path: Path) -> None:
    """One-vs-rest precision-recall curve of each class, with its average precision."""
    figure = Figure(layout="constrained", figsize=(5.5, 4.5))
    axes = figure.subplots()
    for label, rows in curves.items():
        recall = [row["recall"] for row in rows]
        precision = [row["precision"] for row in rows]
        axes.step(recall, precision, where="post", label=f"{label} (AP {average_precision[label]:.3f})")
    axes.set(title="Precision-recall, one class vs the rest", xlabel="recall", ylabel="precision")
    axes.set(xlim=(0, 1.02), ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    save_figure(figure, path)


def shown(value: object) -> str:
    """A param's value as the report has always shown it: strings quoted, the rest as Python prints them."""
    return repr(value) if isinstance(value, str) else str(value)


def percent(value: float) -> str:
    return f"{100 * value:.2f} %"


def scores_table(scores: dict) -> list[str]:
    """Markdown rows of a `classification_scores` result: per class, then the macro and weighted averages."""
    lines = ["| class | precision | recall | F1 | average precision | support |", "|---|---|---|---|---|---|"]
    for label, row in scores["per_class"].items():
        average_precision = "–" if row["average_precision"] is None else f"{row['average_precision']:.3f}"
        lines.append(
            f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} "
            f"| {average_precision} | {row['support']} |"
        )
    for name in ("macro_avg", "weighted_avg"):
        row = scores[name]
        lines.append(
            f"| *{name.replace('_', ' ')}* | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | "
            f"| {scores['images']} |"
        )
    return lines


def unknown_line(metrics: dict) -> str:
    """What the model called none of the classes (`evaluation.unknown_scores`), in one sentence."""
    if not metrics["unknown_thresholds"]:
        return (
            "Unknown: this model predates the none-of-these scores (retrain it to get them); every image gets a class."
        )
    accepted = metrics["accepted_accuracy"]
    by_score = ", ".join(f"{name} {count}" for name, count in metrics["unknown_by_score"].items())
    note = f"; {metrics['unknown_note']}" if metrics["unknown_note"] else ""
    return (
        f"Unknown (a score under its threshold chosen on val: {', '.join(metrics['unknown_thresholds'])}{note}): "
        f"**{metrics['unknown']}** of {metrics['images']} images ({percent(metrics['unknown_share'])}; by score: "
        f"{by_score}); accuracy on the others: {'–' if accepted is None else percent(accepted)}. "
        "The accuracy above counts every image by its most probable class, unknown or not."
    )


def ood_section(ood: dict) -> list[str]:
    """Markdown lines on `evaluate.ood_images` (`evaluation.ood.ood_scores`): per score, the share flagged (all and
    per subfolder), AUROC and the false-positive rate at 95 % true-positive rate."""
    groups = list(ood["photos_by_subfolder"])
    counts = ", ".join(f"{group}: {count}" for group, count in ood["photos_by_subfolder"].items())
    lines = [
        "",
        f"## Photos of none of the classes: `{ood['folder']}`",
        "",
        f"{ood['photos']} photos ({counts}); "
        f"flagged: **{percent(ood['flagged'])}**. The test photos are the positives of AUROC and of the "
        "false-positive rate at 95 % true-positive rate (FPR95: the share of these photos a threshold keeping 95 % "
        "of the test photos lets through).",
        "",
        "| score | flagged | " + " | ".join(f"flagged in `{group}`" for group in groups) + " | AUROC | FPR95 |",
        "|---|---|" + "---|" * len(groups) + "---|---|",
    ]
    for name, row in ood["scores"].items():
        shares = " | ".join(percent(row["flagged_by_subfolder"][group]) for group in groups)
        lines.append(
            f"| {name} | {percent(row['flagged'])} | {shares} | {row['auroc']:.3f} | {percent(row['fpr_at_95_tpr'])} |"
        )
    return lines


def write_report(
    path: Path, test_images_folder: str, metrics: dict, test_images: dict, pictures: dict[str, Path]
) -> None:
    """metrics/report.md: the scores of the test split (and of `evaluate.test_images`), the pictures (linked
    relative to the report) and every param of params.yaml."""
    lines = ["# Evaluation report", "", "## Metrics on the test split", ""]
    lines += [f"Accuracy: **{percent(metrics['accuracy'])}** on {metrics['images']} images.", ""]
    lines += [unknown_line(metrics), ""]
    lines += [
        f"- unknown: `{photo['path']}` ({', '.join(photo['unknown_reason'])})" for photo in metrics["unknown_photos"]
    ]
    lines += [""] if metrics["unknown_photos"] else []
    lines += scores_table(metrics)
    if "ood" in metrics:
        lines += ood_section(metrics["ood"])
    if test_images:
        lines += ["", f"## Metrics on the labelled folder `{test_images_folder}`", ""]
        lines += [
            f"Accuracy: **{percent(test_images['accuracy'])}** ({test_images['correct']}/{test_images['images']}; "
            f"{test_images['unlabelled']} without a label, {test_images['unreadable']} unreadable).",
            "",
        ]
        lines += scores_table(test_images)
        lines += [""] + [
            f"- miss: `{m['path']}`: {m['true']} → {m['predicted']} ({m['confidence']:.2f})"
            for m in test_images["misses"]
        ]
    lines += ["", "## Pictures", ""]
    for title, picture in pictures.items():
        lines += [f"### {title}", "", f"![{title}]({picture.relative_to(path.parent).as_posix()})", ""]
    lines += ["## Params", "", "| param | value |", "|---|---|"]
    lines += [f"| `{key}` | `{shown(value)}` |" for key, value in flat_params()]
    write_atomic(path, ("\n".join(lines) + "\n").encode())
