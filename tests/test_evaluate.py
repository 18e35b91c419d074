"""The evaluate stage after a real `dvc repro`: metrics, the declared plots, pictures, report, a labelled folder."""

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imageclf.core.config import load
from imageclf.core.errors import UserError
from imageclf.data.manifest import read_manifest
from imageclf.data.params import DataParams
from imageclf.data.splitting import make_split
from imageclf.evaluation.evaluate import evaluate, reasons_of, score_test_images, scored_test_split
from imageclf.evaluation.metrics import confusion_matrices
from imageclf.evaluation.params import EvaluateParams
from imageclf.evaluation.reports import confusion_figure
from imageclf.inference.photos import predict_files
from imageclf.inference.predictor import load_predictor
from tests.helpers import CLASSES, PROJECT, SampleModel, dvc_repro, make_image_folder, set_params
from tests.test_predict import save_always_cat

PICTURES = ("confusion_matrix", "misclassified", "precision_recall", "training_curves")


SCORES_KEYS = {
    "accuracy",
    "images",
    "correct",
    "unlabelled",
    "unreadable",
    "macro_avg",
    "weighted_avg",
    "per_class",
    "misses",
}
UNKNOWN_KEYS = {
    "unknown_thresholds",
    "unknown_note",
    "unknown",
    "unknown_share",
    "unknown_by_score",
    "accepted_accuracy",
}


def test_metrics_json_holds_accuracy_per_class_scores_averages_and_misses(reproduced_project: Path) -> None:
    metrics = json.loads((reproduced_project / "metrics/details/evaluate.json").read_text())
    assert set(metrics) == SCORES_KEYS | UNKNOWN_KEYS | {"unknown_photos"}, "no ood without evaluate.ood_images"
    assert metrics["images"] == 3 and set(metrics["per_class"]) == set(CLASSES)
    for row in metrics["per_class"].values():
        assert set(row) == {"precision", "recall", "f1", "support", "average_precision"} and row["support"] == 1
    rows = [row.split(",") for row in (reproduced_project / "metrics/test_predictions.csv").read_text().split()[1:]]
    assert metrics["correct"] == sum(actual == guess for _, actual, guess, _, _ in rows)
    assert metrics["accuracy"] == metrics["correct"] / 3
    assert sorted(miss["path"] for miss in metrics["misses"]) == sorted(
        path for path, actual, guess, _, _ in rows if actual != guess
    )
    train = json.loads((reproduced_project / "metrics/details/train.json").read_text())
    assert metrics["unknown_thresholds"] == train["unknown"]["thresholds"]
    flagged = [unknown == "True" for *_, unknown in rows]
    assert metrics["unknown"] == sum(flagged) and metrics["unknown_share"] == sum(flagged) / 3
    assert [photo["path"] for photo in metrics["unknown_photos"]] == [
        path for (path, *_), out in zip(rows, flagged, strict=True) if out
    ]
    assert all(photo["unknown_reason"] for photo in metrics["unknown_photos"])
    accepted = [actual == guess for (_, actual, guess, _, _), out in zip(rows, flagged, strict=True) if not out]
    assert metrics["accepted_accuracy"] == (sum(accepted) / len(accepted) if accepted else None)
    assert json.loads((reproduced_project / "metrics/test_images.json").read_text()) == {}
    assert json.loads((reproduced_project / "metrics/details/test_images.json").read_text()) == {}


def test_dvc_plots_show_finds_every_declared_plot_with_its_fields(reproduced_project: Path) -> None:
    result = subprocess.run(
        ["dvc", "plots", "show", "--json"], cwd=reproduced_project, capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout)
    assert "errors" not in report
    plots = report["data"]
    fields = {
        "loss": {"epoch", "train_loss", "val_loss"},
        "accuracy": {"epoch", "train_accuracy", "val_accuracy"},
        "confusion": {"actual", "predicted"},
        "confusion_normalised": {"actual", "predicted"},
        **{f"metrics/precision_recall/{label}.json": {"recall", "precision", "threshold"} for label in CLASSES},
    }
    for name, expected in fields.items():
        (plot,) = plots[name]
        values = plot["content"]["data"]["values"]
        assert plot["type"] == "vega" and values and expected <= set(values[0]), name
    for picture in PICTURES:
        (plot,) = plots[f"metrics/plots/{picture}.png"]
        assert plot["type"] == "image"
        with Image.open(reproduced_project / f"metrics/plots/{picture}.png") as image:
            assert image.format == "PNG" and min(image.size) >= 100


def test_test_features_come_from_the_cache_and_score_and_flag_as_the_model_file_predicts(
    sample_model: SampleModel, capsys: pytest.CaptureFixture
) -> None:
    """A model that carries its backbone graph is scored on cached test features (only its head and detector run
    after a change to them), and the probabilities, scores and flags are those `imageclf predict` gives with the
    whole model."""
    config = load(EvaluateParams, PROJECT / "params.yaml")
    test_dir = sample_model.split / "test"
    images = [test_dir / record.path for record in read_manifest(test_dir)]
    model = load_predictor(sample_model.path)
    predicted = list(predict_files(model, images, "none", 8))
    for run in ("first", "second"):  # the first computes what no earlier test put in the cache
        scored = scored_test_split(model, sample_model.path, test_dir, config)
        if run == "second":
            assert f"features of test: {len(images)} images from the cache, 0 computed" in capsys.readouterr().out
        np.testing.assert_allclose(scored.probabilities, [row.probabilities for row in predicted], atol=1e-5)
        assert (scored.probabilities.argmax(axis=1) == np.argmax([row.probabilities for row in predicted], 1)).all()
        scores = [[row.unknown_scores[name] for name in model.unknown_scores] for row in predicted]
        np.testing.assert_allclose(scored.scores, scores, atol=1e-5)
        assert reasons_of(model.unknown_scores, scored.flags) == [row.unknown_reason for row in predicted]


def test_an_unreadable_test_photo_stops_evaluate_with_one_line(sample_model: SampleModel, tmp_path: Path) -> None:
    """Read from a DataLoader worker for the feature cache, its traceback must not reach the user; read for the
    model itself (with test-time views), it gets the same line."""
    test_dir = shutil.copytree(sample_model.split / "test", tmp_path / "test")
    broken = test_dir / read_manifest(test_dir)[0].path
    broken.write_bytes(broken.read_bytes()[:200])
    command = [sys.executable, "-m", "stages.evaluate", str(sample_model.path), str(test_dir), "history.csv", "out"]
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"error: cannot read '{broken}' (OSError: "), result.stderr
    assert result.stderr.splitlines()[-1].endswith("rebuild their folders with dvc repro --force")
    with_flip = dataclasses.replace(load(EvaluateParams, PROJECT / "params.yaml"), tta="flip")
    with pytest.raises(UserError) as raised:  # test-time views: the model runs on the photos, not on cached features
        scored_test_split(load_predictor(sample_model.path), sample_model.path, test_dir, with_flip)
    assert f"error: {raised.value}" == result.stderr.splitlines()[-1]


def test_report_links_the_pictures_and_lists_metrics_and_params(reproduced_project: Path) -> None:
    report = (reproduced_project / "metrics/report.md").read_text()
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert sorted(links) == sorted(f"plots/{picture}.png" for picture in PICTURES)
    assert all((reproduced_project / "metrics" / link).is_file() for link in links)
    metrics = json.loads((reproduced_project / "metrics/details/evaluate.json").read_text())
    assert f"Accuracy: **{100 * metrics['accuracy']:.2f} %** on 3 images." in report
    assert (
        "Unknown (a score under its threshold chosen on val: knn, imagenet): "
        f"**{metrics['unknown']}** of 3 images" in report
    )
    for label in CLASSES:
        assert f"| {label} | {metrics['per_class'][label]['precision']:.3f} |" in report
    assert "| `evaluate.tta` | `'none'` |" in report and "| `data.image_size` | `32` |" in report


def test_a_labelled_folder_is_scored_and_only_evaluate_reruns(reproduced_project: Path, tmp_path: Path) -> None:
    project = shutil.copytree(reproduced_project, tmp_path / "project", symlinks=True)
    photos = make_image_folder(tmp_path / "photos", per_class=2, size=(90, 60), seed=3)
    (photos / "horse/broken.png").write_bytes(b"\x89PNG broken")
    set_params(project, evaluate__test_images=str(photos), evaluate__gallery_size=1)
    ran, output = dvc_repro(project)
    assert ran == {"evaluate"}, output
    assert f"warning: cannot read '{photos / 'horse/broken.png'}'" in output
    scored = json.loads((project / "metrics/details/test_images.json").read_text())
    assert json.loads((project / "metrics/test_images.json").read_text()) == {
        "accuracy": scored["accuracy"],
        "macro_f1": scored["macro_avg"]["f1"],
        "unknown_share": scored["unknown_share"],
    }
    assert scored["images"] == 6 and scored["unlabelled"] == 0 and scored["unreadable"] == 1
    assert scored["correct"] == 6 - len(scored["misses"]) and scored["accuracy"] == scored["correct"] / 6
    assert {label: row["support"] for label, row in scored["per_class"].items()} == {label: 2 for label in CLASSES}
    for miss in scored["misses"]:
        assert Path(miss["path"]).parent.name == miss["true"] != miss["predicted"]
    metrics = json.loads((project / "metrics/details/evaluate.json").read_text())
    assert set(scored) == SCORES_KEYS | UNKNOWN_KEYS == set(metrics) - {"unknown_photos"}, "the schema is shared"
    assert scored["unknown_thresholds"] == metrics["unknown_thresholds"]
    assert set(scored["per_class"]["cat"]) == set(metrics["per_class"]["cat"])
    assert set(scored["macro_avg"]) == set(metrics["macro_avg"]) == set(scored["weighted_avg"])
    assert f"## Metrics on the labelled folder `{photos}`" in (project / "metrics/report.md").read_text()


def shaded_cells_box(panel: np.ndarray) -> tuple[int, int]:
    """Height and width of the box around one panel's cells coloured blue by a share of about 0.3 or more: blue well
    above red, which leaves out the white background, the palest cells and black, white or grey text."""
    red, blue = panel[..., 0], panel[..., 2]
    rows, columns = np.nonzero((blue - red > 50) & (red < 200))
    assert rows.size, "no shaded cell in the panel"
    return rows.max() - rows.min(), columns.max() - columns.min()


def test_the_confusion_plot_has_true_classes_in_rows_and_predicted_in_columns(tmp_path: Path) -> None:
    """An always-cat model on one test image per class: its confusion matrix is one full column (predicted cat), not
    one full row; the picture evaluate draws must show a tall shaded column in both panels."""
    raw = make_image_folder(tmp_path / "raw", per_class=10)
    make_split(raw, CLASSES, 32, 0.1, 0.1, 0, tmp_path / "split")
    history = tmp_path / "history.csv"
    history.write_text("epoch,train_loss,val_loss,train_accuracy,val_accuracy,lr\n1,1.0,1.1,0.5,0.4,0.001\n")
    model_path = save_always_cat(tmp_path / "model.pt")
    data, config = load(DataParams, PROJECT / "params.yaml"), load(EvaluateParams, PROJECT / "params.yaml")
    metrics = evaluate(model_path, tmp_path / "split/test", history, tmp_path / "metrics", data, config)
    assert sorted((miss["true"], miss["predicted"]) for miss in metrics["misses"]) == [("dog", "cat"), ("horse", "cat")]
    with Image.open(tmp_path / "metrics/plots/confusion_matrix.png") as picture:
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    width = pixels.shape[1]
    for panel in (pixels[:, : width // 2], pixels[:, width // 2 :]):
        height, breadth = shaded_cells_box(panel)
        assert height > 2.5 * breadth, f"a shaded box {breadth} wide and {height} high: the matrix is transposed"


def test_each_confusion_count_is_written_in_its_own_cell() -> None:
    """Both panels write row true, column predicted: 3 dogs called cat sit in row dog, column cat."""
    true = ["cat"] * 5 + ["dog"] * 4 + ["horse"] * 2
    predicted = ["cat"] * 5 + ["cat"] * 3 + ["dog"] + ["horse", "dog"]
    counts, normalised = confusion_matrices(true, predicted, CLASSES)
    assert counts[1, 0] == 3 and counts[0, 1] == 0
    figure = confusion_figure(counts, normalised, CLASSES)
    for axes, matrix, written in zip(figure.axes, (counts, normalised), (str, "{:.2f}".format), strict=True):
        cells = {(round(text.get_position()[1]), round(text.get_position()[0])): text.get_text() for text in axes.texts}
        assert cells == {(row, column): written(matrix[row, column]) for row in range(3) for column in range(3)}
        assert [label.get_text() for label in axes.get_yticklabels()] == CLASSES  # rows: true classes
        assert axes.get_ylabel() == "true" and axes.get_xlabel() == "predicted"


def test_a_test_images_folder_without_labels_is_refused_with_one_line(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 30), (200, 60, 60)).save(photos / "unknown.jpg")
    model = load_predictor(save_always_cat(tmp_path / "model.pt"))
    with pytest.raises(UserError, match=f"evaluate.test_images '{photos}' holds no labelled images: put them in class"):
        score_test_images(model, photos, load(EvaluateParams, PROJECT / "params.yaml"))


def write_evaluate_params(tmp_path: Path, **values: object) -> Path:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["evaluate"].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tta": "crops"}, "'evaluate.tta' is 'crops'; allowed: none, flip"),
        ({"gallery_size": -1}, "'evaluate.gallery_size' is -1; it must be 0 or more"),
        ({"test_images": None}, "'evaluate.test_images' must be str, got None"),
        ({"batch_size": 0}, "'evaluate.batch_size' is 0; it must be 1 or more"),
        ({"ood_images": "no_such_folder"}, "'evaluate.ood_images' is 'no_such_folder'; not a folder: give a folder"),
    ],
)
def test_bad_evaluate_params_are_named(tmp_path: Path, values: dict, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        load(EvaluateParams, write_evaluate_params(tmp_path, **values))


def test_a_missing_test_images_folder_stops_evaluate_with_one_line(reproduced_project: Path, tmp_path: Path) -> None:
    project = shutil.copytree(reproduced_project, tmp_path / "project", symlinks=True)
    set_params(project, evaluate__test_images="no_such_folder")
    result = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True)
    assert result.returncode != 0
    assert "error: evaluate.test_images 'no_such_folder' is not a folder" in result.stdout + result.stderr
