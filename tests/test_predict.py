"""`imageclf predict` and the prediction code path it shares with evaluate, run as a user would."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as F

from imageclf.core.errors import UserError
from imageclf.data.images import open_rgb, to_square
from imageclf.data.manifest import read_manifest
from imageclf.data.views import TTA
from imageclf.evaluation.evaluate import load_model_for
from imageclf.inference.photos import ViewTransform, label_from_path, predict_files
from imageclf.inference.predictor import PREDATES, Predictor, torch_predictor
from imageclf.models.architectures import preprocessing_for
from imageclf.models.classifier import create_model
from imageclf.models.model_file import SavedModel, load_model, save_model
from imageclf.models.unknown import REASONS
from tests.helpers import (
    CLASS_COLOURS,
    CLASSES,
    PROJECT,
    SampleModel,
    copy_project,
    dvc_repro,
    make_image_folder,
    none_of_the_classes,
    tiny_params,
)

# A model whose head ignores the image and always favours cat: softmax([1, 0, 0])
CAT_CONFIDENCE = math.e / (math.e + 2)
COLOUR_CLASSES = ["horse", "cat", "dog"]  # out of alphabetical order: the model's outputs come in this order


def save_always_cat(path: Path) -> Path:
    model = create_model("efficientnet_lite0", 3, 32, pretrained=False).eval()
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    save_model(path, SavedModel(model, "efficientnet_lite0", CLASSES, preprocessing_for("efficientnet_lite0", 32)))
    return path


@pytest.fixture(scope="module")
def always_cat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_always_cat(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained by a real `dvc repro train` to tell the generated images' colours apart, with data.classes
    out of alphabetical order (one head, not auto's four: what it predicts is under test, not how L2 was chosen)."""
    root = tmp_path_factory.mktemp("colour-model")
    raw = make_image_folder(root / "raw", per_class=20)
    settings = {
        **tiny_params(raw),
        "data__classes": COLOUR_CLASSES,
        "data__image_size": 64,
        "augment__copies": 0,
        "train__epochs": 60,
        "train__lr": 0.01,
        "train__weight_decay": 0.0,
    }
    dvc_repro(copy_project(root / "project", **settings), "train")
    return root / "project/models/model.pt"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """This checkout's `imageclf ARGS` (the installed script may belong to another one) in the folder `cwd`."""
    environment = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run(
        [sys.executable, "-m", "imageclf", *args], cwd=cwd, capture_output=True, text=True, env=environment
    )


def noisy(label: str, rng: np.random.Generator) -> Image.Image:
    """A 48 × 40 picture in the class's colour with noise, as `make_image_folder` draws them."""
    noise = rng.normal(0, 40, (40, 48, 3))
    return Image.fromarray(np.clip(np.array(CLASS_COLOURS[label]) + noise, 0, 255).astype(np.uint8))


def save_every_mode(folder: Path) -> dict[str, str | None]:
    """One file for each format and mode that phones and the web produce, each in a class's colour where the mode
    has colour; returns the class each file shows (None for the grey ones)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    translucent = noisy("dog", rng).convert("RGBA")
    translucent.putalpha(230)
    exif = Image.Exif()
    exif[0x0112] = 6
    images = {
        "rgb.jpg": (noisy("cat", rng), {}, "cat"),
        "rgba.png": (translucent, {}, "dog"),
        "palette.png": (noisy("horse", rng).convert("P", palette=Image.Palette.ADAPTIVE), {}, "horse"),
        "gray.png": (Image.new("L", (30, 30), 120), {}, None),
        "gray_alpha.png": (Image.new("LA", (30, 30), (90, 50)), {}, None),
        "cmyk.jpg": (noisy("cat", rng).convert("CMYK"), {}, "cat"),
        "sixteen_bit.png": (Image.fromarray(np.full((40, 30), 40000, dtype=np.uint16)), {}, None),
        "photo.webp": (noisy("horse", rng), {}, "horse"),
        "bitmap.bmp": (noisy("dog", rng), {}, "dog"),
        "rotated.jpg": (noisy("cat", rng), {"exif": exif.tobytes()}, "cat"),
    }
    for name, (image, options, _) in images.items():
        image.save(folder / name, **options)
    return {name: label for name, (_, _, label) in images.items()}


@pytest.mark.slow
def test_every_mode_is_predicted_by_its_colour_and_json_probabilities_sum_to_one(
    tmp_path: Path, colour_model: Path
) -> None:
    shown = save_every_mode(tmp_path / "photos")
    result = run("predict", "photos", "--model", str(colour_model), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert sorted(Path(row["path"]).name for row in rows) == sorted(shown)
    for row in rows:
        assert set(row) == {"path", "label", "unknown", "unknown_reason", "confidence", "probabilities"}
        assert list(row["probabilities"]) == COLOUR_CLASSES and sum(row["probabilities"].values()) == pytest.approx(1)
        assert row["confidence"] == max(row["probabilities"].values())
    # the top class: a photo the detector flags is unknown but keeps its probabilities
    labels = {Path(row["path"]).name: max(row["probabilities"], key=row["probabilities"].get) for row in rows}
    assert {name: labels[name] for name, label in shown.items() if label} == {
        name: label for name, label in shown.items() if label
    }
    assert all(row["label"] in (None, labels[Path(row["path"]).name]) for row in rows)


def test_classes_out_of_alphabetical_order_keep_the_training_order(tmp_path: Path, colour_model: Path) -> None:
    """data.classes is [horse, cat, dog]: the model's first output is horse, so naming outputs in sorted order
    would call every horse a cat."""
    make_image_folder(tmp_path / "photos", per_class=3, seed=7)
    result = run("predict", "photos", "--model", str(colour_model), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    top = {row["path"]: max(row["probabilities"], key=row["probabilities"].get) for row in rows}
    assert top == {row["path"]: row["true_label"] for row in rows}, "outputs named in the training order"
    assert all(row["label"] in (None, top[row["path"]]) for row in rows), "a label is the top class, or unknown"
    assert sorted(Path(row["path"]).parent.name for row in rows) == sorted(CLASSES * 3)
    assert "accuracy: 100.0% (9/9 labelled images)" in result.stderr.splitlines()


@pytest.mark.slow
def test_table_shows_top_k_and_a_corrupt_file_gives_one_error(tmp_path: Path, always_cat: Path) -> None:
    photos = make_image_folder(tmp_path / "photos", per_class=2)
    (photos / "dog/broken.jpg").write_text("not an image")
    (tmp_path / "empty").mkdir()
    result = run("predict", "photos", "empty", "--model", str(always_cat), "--top-k", "2", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"note: {PREDATES}",
        "error: 'empty' holds no image files (.jpg, .png, .webp, .bmp, ...)",
        "error: cannot read 'photos/dog/broken.jpg': "
        "UnidentifiedImageError: cannot identify image file 'photos/dog/broken.jpg'",
    ]
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["path", "class", "confidence", "top-2"]
    rows = [line.split() for line in lines[1:7]]
    assert [row[0] for row in rows] == [f"photos/{label}/{label}_{i}.jpg" for label in CLASSES for i in range(2)]
    other = (1 - CAT_CONFIDENCE) / 2
    for row in rows:
        assert row[1:] == ["cat", f"{CAT_CONFIDENCE:.3f}", "cat", f"{CAT_CONFIDENCE:.3f}", "dog", f"{other:.3f}"]


@pytest.mark.slow
def test_accuracy_and_misses_from_class_folders(tmp_path: Path, always_cat: Path) -> None:
    photos = make_image_folder(tmp_path / "photos", per_class=2)
    for path in photos.rglob("*.jpg"):
        path.rename(path.with_name(f"photo{path.stem[-1]}.jpg"))  # labels only from the folders
    result = run("predict", "photos", "--model", str(always_cat), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = result.stdout.splitlines()[7:]
    assert summary[0] == "accuracy: 33.3% (2/6 labelled images)"
    assert sorted(summary[1:]) == [
        f"miss: photos/{label}/photo{i}.jpg  true {label}, predicted cat ({CAT_CONFIDENCE:.3f})"
        for label in ("dog", "horse")
        for i in range(2)
    ]


@pytest.mark.slow
def test_accuracy_from_file_names_with_json_on_stderr(tmp_path: Path, always_cat: Path) -> None:
    """The study group's convention: cat_dark.jpg, dog_multiple.jpg, horse_up.jpg, all in one folder."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat_dark.jpg", "Cat_sofa.jpg", "dog_multiple.jpg", "horse_up.jpg", "unknown.jpg"):
        Image.new("RGB", (90, 60), (120, 120, 120)).save(photos / name)
    result = run("predict", "photos", "--model", str(always_cat), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 5
    assert result.stderr.splitlines() == [
        f"note: {PREDATES}",  # once: the model file was saved without a detector, as before it existed
        "accuracy: 50.0% (2/4 labelled images; 1 without a label not counted)",
        f"miss: photos/dog_multiple.jpg  true dog, predicted cat ({CAT_CONFIDENCE:.3f})",
        f"miss: photos/horse_up.jpg  true horse, predicted cat ({CAT_CONFIDENCE:.3f})",
    ]


def test_an_image_of_none_of_the_classes_is_unknown_with_its_reason_and_scores_kept(
    tmp_path: Path, sample_model: SampleModel
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, content in none_of_the_classes().items():
        (photos / name).write_bytes(content)
    trained_on = [sample_model.split / "train" / record.path for record in read_manifest(sample_model.split / "train")]
    for label in CLASSES:  # photos it learned: one of the classes
        shutil.copy(next(path for path in trained_on if path.parent.name == label), photos / f"{label}_photo.jpg")

    result = run("predict", "photos", "--model", str(sample_model.path), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {Path(row["path"]).name: row for row in json.loads(result.stdout)}
    for name in none_of_the_classes():
        row = rows.pop(name)
        assert set(row) == {"path", "label", "unknown", "unknown_reason", "confidence", "probabilities"}
        assert row["label"] is None and row["unknown"] is True and "knn" in row["unknown_reason"]
        assert list(row["probabilities"]) == CLASSES and sum(row["probabilities"].values()) == pytest.approx(1)
        assert row["confidence"] == max(row["probabilities"].values())
    assert {name: (row["label"], row["unknown"], row["unknown_reason"]) for name, row in rows.items()} == {
        f"{label}_photo.jpg": (label, False, []) for label in CLASSES
    }
    assert not result.stderr.startswith("note:"), "a model with the scores predates nothing"
    assert result.stderr.splitlines()[0].startswith(
        "unknown: 4 of 7 images are none of cat, dog, horse (far from every training photo (feature distance): 4"
    )
    table = run("predict", "photos/noise.png", "--model", str(sample_model.path), cwd=tmp_path).stdout.splitlines()
    assert table[1].split()[:2] == ["photos/noise.png", "unknown"]
    assert table[1].endswith(f"({REASONS['knn']})") or f"({REASONS['knn']}; " in table[1], "the reason in words"


def test_labels_come_from_the_name_prefix_or_a_class_folder_below_the_target(tmp_path: Path) -> None:
    (tmp_path / "dog/a").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    assert label_from_path(tmp_path / "a/horse_far.jpg", tmp_path / "a", CLASSES) == "horse"
    assert label_from_path(tmp_path / "a/Dog/x/1.jpg", tmp_path / "a", CLASSES) == "dog"
    assert label_from_path(tmp_path / "dog/a/1.jpg", tmp_path / "dog/a", CLASSES) is None
    assert label_from_path(tmp_path / "a/catalogue.jpg", tmp_path / "a", CLASSES) is None


def random_lite0_on_pytorch(path: Path) -> Predictor:
    """A Lite0 with random weights (seed 0) saved at `path`, predicted on PyTorch."""
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 3, 32, pretrained=False).eval()
    save_model(path, SavedModel(model, "efficientnet_lite0", CLASSES, preprocessing_for("efficientnet_lite0", 32)))
    return torch_predictor(path)


def test_batches_give_the_same_probabilities_as_one_at_a_time(tmp_path: Path) -> None:
    photos = make_image_folder(tmp_path / "photos", per_class=2, size=(60, 40))
    (photos / "cat/broken.jpg").write_bytes(b"\xff\xd8 truncated")
    predictor = random_lite0_on_pytorch(tmp_path / "model.pt")
    paths = sorted(photos.rglob("*.jpg"))
    batched = list(predict_files(predictor, paths, "flip", batch_size=4))
    single = list(predict_files(predictor, paths, "flip", batch_size=1, decode_threads=0))
    assert [p.path for p in batched] == paths
    assert [p.error != "" for p in batched] == [path.name == "broken.jpg" for path in paths]
    for one, other in zip(batched, single, strict=True):
        if one.probabilities is not None:
            assert one.probabilities == pytest.approx(other.probabilities, abs=1e-5)
            assert one.probabilities.sum() == pytest.approx(1)


def test_views_keep_a_subject_at_the_left_edge() -> None:
    photo = Image.new("RGB", (300, 200), (255, 255, 255))
    photo.paste((255, 0, 0), (0, 80, 30, 120))  # a small red subject at the very left edge of a 3:2 photo
    assert list(TTA) == ["none", "flip"]
    (whole,) = TTA["none"](photo)
    assert whole is photo
    original, mirrored = TTA["flip"](photo)
    assert original is photo and mirrored.size == (300, 200)
    assert np.asarray(mirrored)[100, 295].tolist() == [255, 0, 0] and np.asarray(mirrored)[100, 5].tolist() == [255] * 3
    squares = ViewTransform(preprocessing_for("efficientnet_lite0", 32), "flip")(photo)
    assert squares.shape == (2, 3, 32, 32)
    assert squares[0, :, 16, 1].tolist() == pytest.approx([1.0, -1.0, -1.0], abs=0.1)  # red survives at the edge


@pytest.mark.slow
def test_a_model_for_other_classes_or_no_model_is_named(tmp_path: Path, always_cat: Path) -> None:
    with pytest.raises(UserError, match=f"model '{always_cat}' was trained for classes"):
        load_model_for(always_cat, ["cat", "dog"])
    assert load_model(always_cat).classes == CLASSES
    result = run("predict", "x.jpg", "--model", "nothing.pt", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: model file 'nothing.pt' not found: train one with dvc repro, or pass --model PATH"
    )
    (tmp_path / "fake.pt").write_bytes(b"junk")
    result = run("predict", "x.jpg", "--model", "fake.pt", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("error: 'fake.pt' is not a model file")


@pytest.mark.parametrize("architecture", ["efficientnet_lite0", "resnet18"])
def test_numpy_preprocessing_gives_torchvisions_tensor_values(architecture: str) -> None:
    """Exported models are fed by NumPy alone: the values must be those torchvision computes, to float rounding
    (NumPy multiplies by 1 / (255 std) where torchvision divides twice), in the same channels-first layout."""
    preprocessing = preprocessing_for(architecture, 96)
    for path in sorted((PROJECT / "data/sample").rglob("*.jpg"))[::10]:
        photo = open_rgb(path, min_side=96)
        expected = F.normalize(F.to_tensor(to_square(photo, 96)), preprocessing.mean, preprocessing.std).numpy()
        array = preprocessing(photo)
        assert array.flags["C_CONTIGUOUS"] and array.dtype == np.float32 and array.shape == expected.shape, path
        np.testing.assert_allclose(array, expected, rtol=0, atol=2e-6, err_msg=str(path))


def test_flip_averages_the_photo_and_its_mirror_image(tmp_path: Path) -> None:
    """`--tta flip` (and `evaluate.tta: flip`) is the mean of the model's probabilities for the photo and for its
    mirror image, not either one alone."""
    predictor = random_lite0_on_pytorch(tmp_path / "model.pt")
    photo = tmp_path / "photo.png"
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :20] = (250, 30, 30)  # red on the left only: the mirror image differs
    Image.fromarray(pixels).save(photo)
    (flipped,) = predict_files(predictor, [photo], "flip", batch_size=1)
    image = open_rgb(photo, min_side=32)
    views = [predictor.preprocessing(view) for view in (image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))]
    alone, mirrored = predictor.predict(np.stack(views)).probabilities
    assert np.abs(alone - mirrored).max() > 1e-3, "the test needs a photo whose mirror image scores differently"
    np.testing.assert_allclose(flipped.probabilities, (alone + mirrored) / 2, rtol=0, atol=1e-6)
