"""`evaluation.ood`: how well the model tells photos of none of its classes from the test split's, per score and
combined, on a folder of such photos; and the heatmaps over evaluate's misclassified gallery."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score, roc_curve

from imageclf.core.config import load
from imageclf.core.errors import UserError
from imageclf.evaluation.evaluate import gallery_heatmaps, scored_test_split
from imageclf.evaluation.ood import auroc, combined_scores, fpr_at_tpr, ood_scores
from imageclf.evaluation.params import EvaluateParams
from imageclf.evaluation.reports import Miss
from imageclf.inference.photos import predict_files
from imageclf.inference.predictor import load_predictor
from tests.helpers import CLASSES, PROJECT, SampleModel, dvc_repro, none_of_the_classes, set_params
from tests.test_predict import save_always_cat


def test_auroc_is_the_chance_a_photo_of_the_classes_scores_above_one_of_none_ties_counting_half() -> None:
    positives, negatives = np.array([0.9, 0.8, 0.4]), np.array([0.5, 0.1])
    assert auroc(positives, negatives) == pytest.approx(5 / 6), "0.4 is under 0.5: one pair of six ranked wrong"
    assert auroc(np.array([0.5]), np.array([0.5, 0.2])) == pytest.approx(0.75), "a tie counts half"
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    rng = np.random.default_rng(0)
    scores_in, scores_out = rng.normal(1, 1, 300), rng.normal(0, 1, 200).round(1)  # rounded: ties
    labels = np.r_[np.ones(300), np.zeros(200)]
    assert auroc(scores_in, scores_out) == pytest.approx(roc_auc_score(labels, np.r_[scores_in, scores_out]))


def test_the_false_positive_rate_at_95_percent_true_positive_rate() -> None:
    positives = np.arange(1.0, 21.0)  # 20 photos of the classes: a threshold of 2 keeps 19 of them, 95 %
    negatives = np.array([0.5, 1.5, 2.0, 10.0, 25.0])
    assert fpr_at_tpr(positives, negatives) == pytest.approx(3 / 5), "2, 10 and 25 get through"
    rng = np.random.default_rng(1)
    scores_in, scores_out = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    fpr, tpr, _ = roc_curve(np.r_[np.ones(300), np.zeros(200)], np.r_[scores_in, scores_out])
    assert fpr_at_tpr(scores_in, scores_out) == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


def test_the_combined_score_is_the_lowest_share_of_test_photos_at_or_under_a_photo_over_the_scores() -> None:
    test = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])
    photos = np.array([[3.5, 50.0], [5.0, 5.0], [0.0, 25.0]])
    np.testing.assert_allclose(combined_scores(test, photos), [0.75, 0.0, 0.0])
    np.testing.assert_allclose(combined_scores(test, test), [0.25, 0.5, 0.75, 1.0])  # a test photo counts itself


def ood_folder(root: Path) -> Path:
    """Photos of none of the classes in two subfolders, one at the top, and a file that is no image."""
    images = none_of_the_classes()
    for name in ("grey.png", "red.png"):
        (root / "plain").mkdir(parents=True, exist_ok=True)
        (root / "plain" / name).write_bytes(images[name])
    for name in ("noise.png", "text.png"):
        (root / "busy/deeper").mkdir(parents=True, exist_ok=True)
        (root / "busy/deeper" / name).write_bytes(images[name])
    (root / "top.png").write_bytes(images["noise.png"])
    (root / "plain/broken.jpg").write_bytes(b"not an image")
    return root


@pytest.mark.slow
def test_a_folder_of_photos_of_none_of_the_classes_is_scored_per_score_and_subfolder(
    sample_model: SampleModel, tmp_path: Path
) -> None:
    config = load(EvaluateParams, PROJECT / "params.yaml")
    folder = ood_folder(tmp_path / "ood")
    model = load_predictor(sample_model.path)
    test = scored_test_split(model, sample_model.path, sample_model.split / "test", config)
    scored = ood_scores(model, folder, test, config)
    assert scored["photos"] == 5 and scored["photos_by_subfolder"] == {".": 1, "busy": 2, "plain": 2}
    assert set(scored["scores"]) == {"knn", "imagenet", "combined"}
    photos = sorted(path for path in folder.rglob("*.png"))
    reasons = {p.path: p.unknown_reason for p in predict_files(model, photos, "none", 8)}
    for name in ("knn", "imagenet"):
        row = scored["scores"][name]
        assert row["flagged"] == pytest.approx(np.mean([name in reason for reason in reasons.values()]))
        plain = [name in reason for path, reason in reasons.items() if path.parent.name == "plain"]
        assert row["flagged_by_subfolder"]["plain"] == pytest.approx(np.mean(plain))
    assert scored["flagged"] == scored["scores"]["combined"]["flagged"] == 1.0, "all far from every class"
    assert scored["scores"]["knn"]["auroc"] == 1.0 and scored["scores"]["knn"]["fpr_at_95_tpr"] == 0.0

    (tmp_path / "empty/sub").mkdir(parents=True)
    (tmp_path / "empty/notes.txt").write_text("no photos here")
    with pytest.raises(UserError, match=f"evaluate.ood_images '{tmp_path / 'empty'}' holds no readable image files"):
        ood_scores(model, tmp_path / "empty", test, config)


def test_the_misclassified_gallery_shows_where_the_model_looked_for_the_class_it_predicted(tmp_path: Path) -> None:
    model = save_always_cat(tmp_path / "model.pt")
    photo = tmp_path / "dog.png"
    Image.new("RGB", (50, 40), (60, 200, 60)).save(photo)
    misses = [Miss(photo, "dog.png", "dog", "cat", 0.58)]
    (shown,) = gallery_heatmaps(model, misses, CLASSES)
    assert shown.heatmap.size == (32, 32) and shown.heatmap.mode == "RGB", "the photo as the model saw it"
    assert gallery_heatmaps(tmp_path / "model.onnx", misses, CLASSES) == misses, "an export has no gradients"


def test_evaluate_scores_an_ood_folder_and_only_evaluate_reruns(reproduced_project: Path, tmp_path: Path) -> None:
    project = shutil.copytree(reproduced_project, tmp_path / "project", symlinks=True)
    folder = ood_folder(tmp_path / "ood")
    set_params(project, evaluate__ood_images=str(folder))
    ran, output = dvc_repro(project)
    assert ran == {"evaluate"}, output
    assert f"warning: cannot read '{folder / 'plain/broken.jpg'}'" in output
    details = json.loads((project / "metrics/details/evaluate.json").read_text())
    headline = json.loads((project / "metrics/evaluate.json").read_text())
    assert headline["ood_flagged"] == details["ood"]["flagged"] and set(headline) == {
        "accuracy",
        "macro_f1",
        "unknown_share",
        "ood_flagged",
    }
    assert details["ood"]["photos"] == 5 and set(details["ood"]["scores"]) == {"knn", "imagenet", "combined"}
    report = (project / "metrics/report.md").read_text()
    assert f"## Photos of none of the classes: `{folder}`" in report
    assert "| score | flagged | flagged in `.` | flagged in `busy` | flagged in `plain` | AUROC | FPR95 |" in report

    (project / "empty").mkdir()
    set_params(project, evaluate__ood_images="empty")
    result = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True)
    assert result.returncode != 0
    assert "error: evaluate.ood_images 'empty' holds no readable image files" in result.stdout + result.stderr
