"""Augmentation: every training image as split stored it, plus its seeded variants."""

import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imageclf.core.config import load
from imageclf.core.errors import UserError
from imageclf.core.files import link_or_copy, write_atomic
from imageclf.data.augmentation import augmented_copy, build_transform, image_seed, make_augmented
from imageclf.data.datasets import ImageDataset
from imageclf.data.images import open_rgb, to_square
from imageclf.data.manifest import read_manifest, write_manifest
from imageclf.data.params import AugmentParams
from imageclf.data.splitting import make_split
from imageclf.models.architectures import preprocessing_for
from tests.helpers import CLASSES, PROJECT

TRANSFORMS = [
    {"HorizontalFlip": {"p": 0.5}},
    {"Affine": {"rotate": [-20, 20], "p": 1.0}},
    {"ColorJitter": {"brightness": 0.4, "p": 1.0}},
]


SHIPPED_TRANSFORMS = load(AugmentParams, PROJECT / "params.yaml").transforms
PHOTO_SIDE = 64


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photo of the embedded sample, small so that hundreds of augmentations take a second."""
    return to_square(open_rgb(sorted((PROJECT / "data/sample/cat").glob("*.jpg"))[0]), PHOTO_SIDE)


@pytest.fixture(scope="module")
def sample_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded sample split for a 48-pixel model input."""
    split = tmp_path_factory.mktemp("split")
    make_split(PROJECT / "data/sample", CLASSES, 48, 0.1, 0.1, 0, split)
    return split


def assert_binomial_share(observed: float, probability: float, trials: int, what: str) -> None:
    """`observed` is within 4 standard deviations of the share `probability` expected in `trials` draws."""
    tolerance = 4 * math.sqrt(probability * (1 - probability) / trials)
    assert abs(observed - probability) <= tolerance, f"{what}: {observed:.3f}, expected {probability:.3f}"


def test_each_transform_fires_independently_at_its_p(photo: Image.Image) -> None:
    copies = 400
    transform = build_transform(SHIPPED_TRANSFORMS)
    names = [type(step).__name__ for step in transform.transforms]
    probabilities = np.array([step.p for step in transform.transforms])
    fired, unchanged = [], 0
    for copy in range(1, copies + 1):
        variant = augmented_copy(transform, photo, image_seed(42, "ab" * 32, copy))
        fired.append([bool(step.params) for step in transform.transforms])  # params are empty when skipped
        unchanged += np.array_equal(np.asarray(variant), np.asarray(photo))
    fired = np.array(fired)

    for index, name in enumerate(names):
        assert_binomial_share(fired[:, index].mean(), probabilities[index], copies, f"{name} fired")
    for first in range(len(names)):
        for second in range(first + 1, len(names)):
            both = (fired[:, first] & fired[:, second]).mean()
            expected = probabilities[first] * probabilities[second]
            assert_binomial_share(both, expected, copies, f"{names[first]} and {names[second]} fired together")
    assert_binomial_share(unchanged / copies, np.prod(1 - probabilities), copies, "copies equal to the original")


def test_the_same_copy_of_different_images_is_augmented_differently(photo: Image.Image) -> None:
    transform = build_transform(SHIPPED_TRANSFORMS)
    hashes = [hashlib.sha256(str(index).encode()).hexdigest() for index in range(20)]
    variants = {augmented_copy(transform, photo, image_seed(42, sha256, 1)).tobytes() for sha256 in hashes}
    assert len(variants) >= 18, "copy 1 of different images drew the same transforms"


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.jpg")}


def test_augmented_copies_are_seeded(sample_split: Path, tmp_path: Path) -> None:
    train = read_manifest(sample_split / "train")
    make_augmented(sample_split / "train", tmp_path / "a", 2, 5, TRANSFORMS)
    written = read_manifest(tmp_path / "a")
    assert len(written) == 3 * len(train)
    assert {r.label for r in written} == set(CLASSES)
    first = digest(tmp_path / "a")
    make_augmented(sample_split / "train", tmp_path / "b", 2, 5, TRANSFORMS)
    assert digest(tmp_path / "b") == first
    make_augmented(sample_split / "train", tmp_path / "c", 2, 6, TRANSFORMS)
    other = digest(tmp_path / "c")
    originals = [name for name in first if name.endswith("_0.jpg")]
    variants = [name for name in first if not name.endswith("_0.jpg")]
    assert all(other[name] == first[name] for name in originals)
    assert all(other[name] != first[name] for name in variants)


def test_originals_are_copied_and_reach_the_model_as_val_images_do(sample_split: Path, tmp_path: Path) -> None:
    make_augmented(sample_split / "train", tmp_path / "augmented", 1, 5, TRANSFORMS)
    stored = {
        record.source_sha256: sample_split / "train" / record.path for record in read_manifest(sample_split / "train")
    }
    written = read_manifest(tmp_path / "augmented")
    for record in written:
        if record.path.endswith("_0.jpg"):
            assert (tmp_path / "augmented" / record.path).read_bytes() == stored[record.source_sha256].read_bytes()
        else:
            with (
                Image.open(tmp_path / "augmented" / record.path) as variant,
                Image.open(stored[record.source_sha256]) as image,
            ):
                assert variant.size == image.size, "an augmented copy was resized"

    original = next(index for index, record in enumerate(written) if record.path.endswith("_0.jpg"))
    as_val = written[original]
    write_atomic(tmp_path / "val" / as_val.path, stored[as_val.source_sha256].read_bytes())
    write_manifest(tmp_path / "val", [as_val])
    preprocessing = preprocessing_for("efficientnet_lite0", 48)
    train_input, _ = ImageDataset.from_manifest(tmp_path / "augmented", CLASSES, preprocessing)[original]
    val_input, _ = ImageDataset.from_manifest(tmp_path / "val", CLASSES, preprocessing)[0]
    assert torch.equal(train_input, val_input)


def test_without_copies_the_originals_are_linked_without_importing_albumentations(
    sample_split: Path, tmp_path: Path
) -> None:
    """The default `augment.copies: 0` must not pay the albumentations import, nor a copy of every byte, for
    nothing: each original is a hard link to the file split wrote."""
    script = (
        "import sys; from pathlib import Path; from imageclf.data.augmentation import make_augmented; "
        f"make_augmented(Path('{sample_split / 'train'}'), Path('{tmp_path / 'augmented'}'), 0, 5, {TRANSFORMS!r}); "
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('albumentations', 'cv2')))"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    stored = {record.source_sha256: record.path for record in read_manifest(sample_split / "train")}
    written = read_manifest(tmp_path / "augmented")
    assert sorted(record.source_sha256 for record in written) == sorted(stored)
    for record in written:
        original = sample_split / "train" / stored[record.source_sha256]
        assert (tmp_path / "augmented" / record.path).samefile(original)


@pytest.mark.parametrize("copies", [0, 1])
def test_a_missing_training_image_is_named_in_one_line(sample_split: Path, tmp_path: Path, copies: int) -> None:
    train = shutil.copytree(sample_split / "train", tmp_path / "train")
    missing = train / read_manifest(train)[3].path
    missing.unlink()
    with pytest.raises(UserError, match=rf"cannot read '{re.escape(str(missing))}' \(FileNotFoundError"):
        make_augmented(train, tmp_path / "augmented", copies, 5, TRANSFORMS)
    assert not (tmp_path / "augmented").exists(), "nothing half written"


def test_a_file_that_cannot_be_linked_is_copied(tmp_path: Path) -> None:
    """Across file systems a hard link fails (EXDEV): the file is copied instead."""
    other_file_system = Path("/dev/shm")
    if not other_file_system.is_dir() or other_file_system.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    source = other_file_system / f"imageclf-link-test-{os.getpid()}.jpg"
    source.write_bytes(b"photo bytes")
    try:
        link_or_copy(source, tmp_path / "copied.jpg")
    finally:
        source.unlink()
    assert (tmp_path / "copied.jpg").read_bytes() == b"photo bytes"
    assert [path.name for path in tmp_path.iterdir()] == ["copied.jpg"]  # no temporary file left


@pytest.mark.parametrize(
    ("transforms", "message"),
    [
        ([{"Fliip": {}}], r"augment.transforms\[0\]: 'Fliip' is not an albumentations transform"),
        ([{"HorizontalFlip": {}}, {"Affine": {"rotat": 3}}], r"augment.transforms\[1\] \(Affine\): bad arguments"),
    ],
)
def test_bad_transforms_are_named(transforms: list[dict], message: str) -> None:
    with pytest.raises(UserError, match=message):
        build_transform(transforms)
