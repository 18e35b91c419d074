"""Finding images, the stratified split and the split stage's outputs, on generated images."""

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from imageclf.core.config import load
from imageclf.core.errors import UserError
from imageclf.data.folders import find_images
from imageclf.data.manifest import Record, read_manifest
from imageclf.data.params import SplitParams
from imageclf.data.splitting import make_split, split_records
from tests.helpers import CLASSES, PROJECT, make_image_folder


def records(per_class: dict[str, int]) -> list[Record]:
    return [
        Record(f"{label}/{i}.jpg", label, hashlib.sha256(f"{label}{i}".encode()).hexdigest(), f"raw/{label}/{i}")
        for label, count in per_class.items()
        for i in range(count)
    ]


def test_split_is_stratified_disjoint_and_complete() -> None:
    items = records({"cat": 40, "dog": 20, "horse": 10})
    splits = split_records(items, val=0.1, test=0.2, seed=1)
    by_label = {name: [r.label for r in members] for name, members in splits.items()}
    assert [by_label["test"].count(label) for label in CLASSES] == [8, 4, 2]
    assert [by_label["val"].count(label) for label in CLASSES] == [4, 2, 1]
    assert [by_label["train"].count(label) for label in CLASSES] == [28, 14, 7]
    hashes = [r.source_sha256 for members in splits.values() for r in members]
    assert sorted(hashes) == sorted(r.source_sha256 for r in items)


def test_split_depends_on_seed_not_on_file_order() -> None:
    items = records({"cat": 30, "dog": 30})
    first = split_records(items, 0.1, 0.1, seed=3)
    assert split_records(list(reversed(items)), 0.1, 0.1, seed=3) == first
    assert split_records(items, 0.1, 0.1, seed=4)["test"] != first["test"]


def test_a_class_too_small_for_the_split_is_refused() -> None:
    with pytest.raises(UserError, match=r"class 'dog' has only 2 usable images .*raw/dog.*at least 3"):
        split_records(records({"cat": 20, "dog": 2}), 0.1, 0.1, seed=0)


def test_find_images_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"data.raw_dir '{tmp_path / 'nowhere'}' is not a folder"):
        find_images(tmp_path / "nowhere", CLASSES)
    make_image_folder(tmp_path / "raw", per_class=2)
    (tmp_path / "raw/other").mkdir()
    found = find_images(tmp_path / "raw", CLASSES)
    assert {label: len(paths) for label, paths in found.items()} == {"cat": 2, "dog": 2, "horse": 2}
    with pytest.raises(UserError, match=f"class folder '{tmp_path / 'raw/cow'}' is missing"):
        find_images(tmp_path / "raw", [*CLASSES, "cow"])
    for path in (tmp_path / "raw/horse").iterdir():
        path.unlink()
    (tmp_path / "raw/horse/.DS_Store").write_bytes(b"\0")
    with pytest.raises(UserError, match=f"class folder '{tmp_path / 'raw/horse'}' holds no images"):
        find_images(tmp_path / "raw", CLASSES)


def warnings_in(stderr: str) -> list[str]:
    """The warning lines of a run's stderr, without its progress bars."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("warning:")]


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_make_split_is_reproducible_downscales_and_skips_unreadable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = make_image_folder(tmp_path / "raw", per_class=10, size=(400, 300))
    (raw / "dog/broken.jpg").write_bytes(b"not a jpeg at all")
    (raw / "cat/copy.jpg").write_bytes((raw / "cat/cat_0.jpg").read_bytes())
    counts = make_split(raw, CLASSES, 64, 0.1, 0.1, 0, tmp_path / "a", tmp_path / "a/rejected.csv")
    assert warnings_in(capsys.readouterr().err) == [
        f"warning: rejected 1 file(s) (1 not an image): each is listed with its reason in {tmp_path}/a/rejected.csv"
    ]
    assert counts["rejected"]["not an image"] == counts["rejected"]["total"] == 1 and counts["exact_duplicates"] == 1
    assert counts["images"]["train"] == {"cat": 8, "dog": 8, "horse": 8, "total": 24}

    test_records = read_manifest(tmp_path / "a/test")
    assert len(test_records) == 3 and {r.label for r in test_records} == set(CLASSES)
    from PIL import Image

    with Image.open(tmp_path / "a/test" / test_records[0].path) as image:
        assert min(image.size) == round(64 * 1.15) and image.size[0] > image.size[1]

    make_split(raw, CLASSES, 64, 0.1, 0.1, 0, tmp_path / "b", tmp_path / "b/rejected.csv")
    assert (tmp_path / "a/rejected.csv").read_bytes() == (tmp_path / "b/rejected.csv").read_bytes()
    for name in ("train", "val", "test"):
        assert folder_digest(tmp_path / "a" / name) == folder_digest(tmp_path / "b" / name)


def test_a_manifest_of_another_version_is_refused_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("path,label,sha256,source\ncat/a.jpg,cat,abc,raw/cat/a.jpg\n")
    with pytest.raises(UserError, match=r"manifest '.*manifest.csv' has the columns \['path', 'label', 'sha256'"):
        read_manifest(tmp_path)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    }


def test_train_per_class_draws_nested_subsets_and_leaves_val_and_test_as_they_are(tmp_path: Path) -> None:
    """For one seed the 3 photos of a class are among its 6 and those among all of them; another seed draws others;
    val and test are the same bytes whatever the limit, so every point of a learning curve is scored alike."""
    raw = make_image_folder(tmp_path / "raw", per_class=12)
    kept: dict[tuple[int, int | None], dict[str, set[str]]] = {}
    for seed in (0, 1):
        for limit in (None, 6, 3):
            out = tmp_path / f"split-{seed}-{limit}"
            counts = make_split(raw, CLASSES, 32, 0.1, 0.1, seed, out, train_limit=limit)
            kept[seed, limit] = {
                label: {record.source_sha256 for record in read_manifest(out / "train") if record.label == label}
                for label in CLASSES
            }
            assert counts["images"]["train"]["total"] == sum(map(len, kept[seed, limit].values()))
            assert counts["train_per_class"] == (limit or "all") and counts["classes_with_fewer"] == []
            for name in ("val", "test"):
                assert folder_bytes(out / name) == folder_bytes(tmp_path / f"split-{seed}-None" / name)
    for seed in (0, 1):
        for label in CLASSES:
            assert (
                len(kept[seed, 3][label]) == 3 and len(kept[seed, 6][label]) == 6 and len(kept[seed, None][label]) == 10
            )
            assert kept[seed, 3][label] < kept[seed, 6][label] < kept[seed, None][label]
    assert kept[0, 3] != kept[1, 3]


def test_a_class_with_fewer_photos_than_the_limit_keeps_them_all_and_is_named(tmp_path: Path) -> None:
    raw = make_image_folder(tmp_path / "raw", per_class=12)
    make_image_folder(tmp_path / "more", per_class=10, seed=1)
    for extra in (tmp_path / "more/cat").iterdir():  # cats get 22 photos, 18 of them for training
        extra.rename(raw / "cat" / f"more_{extra.name}")
    counts = make_split(raw, CLASSES, 32, 0.1, 0.1, 0, tmp_path / "split", train_limit=15)
    assert counts["classes_with_fewer"] == ["dog", "horse"]
    assert {label: counts["images"]["train"][label] for label in CLASSES} == {"cat": 15, "dog": 10, "horse": 10}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "'split.train_per_class' is 0; give the most training photos a class keeps, 1 or more, or all"),
        (-5, "'split.train_per_class' is -5; give the most training photos a class keeps"),
        (2.5, "'split.train_per_class' must be int or str, got 2.5"),
        ("many", "'split.train_per_class' is 'many'; give the most training photos a class keeps, 1 or more, or all"),
    ],
)
def test_a_bad_train_per_class_is_named(tmp_path: Path, value: object, message: str) -> None:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["split"]["train_per_class"] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(UserError, match=re.escape(message)):
        load(SplitParams, tmp_path / "params.yaml")
