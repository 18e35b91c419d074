"""Augmentation: every training image plus its seeded variants, at the model's input size."""

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from imageclf.augmentation import build_transform, make_augmented
from imageclf.errors import UserError
from imageclf.manifest import read_manifest
from imageclf.splitting import make_split
from tests.helpers import CLASSES, PROJECT

TRANSFORMS = [
    {"HorizontalFlip": {"p": 0.5}},
    {"Affine": {"rotate": [-20, 20], "p": 1.0}},
    {"ColorJitter": {"brightness": 0.4, "p": 1.0}},
]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.jpg")}


def test_augmented_copies_are_seeded_and_sized(tmp_path: Path) -> None:
    make_split(PROJECT / "data/sample", CLASSES, 48, 0.1, 0.1, 0, tmp_path / "split")
    train = read_manifest(tmp_path / "split/train")
    make_augmented(tmp_path / "split/train", tmp_path / "a", 48, 2, 5, TRANSFORMS)
    written = read_manifest(tmp_path / "a")
    assert len(written) == 3 * len(train)
    assert {r.label for r in written} == set(CLASSES)
    with Image.open(tmp_path / "a" / written[1].path) as image:
        assert image.size == (48, 48)
    first = digest(tmp_path / "a")
    make_augmented(tmp_path / "split/train", tmp_path / "b", 48, 2, 5, TRANSFORMS)
    assert digest(tmp_path / "b") == first
    make_augmented(tmp_path / "split/train", tmp_path / "c", 48, 2, 6, TRANSFORMS)
    other = digest(tmp_path / "c")
    originals = [name for name in first if name.endswith("_0.jpg")]
    variants = [name for name in first if not name.endswith("_0.jpg")]
    assert all(other[name] == first[name] for name in originals)
    assert all(other[name] != first[name] for name in variants)


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
