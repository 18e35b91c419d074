"""`imageclf curve`: each point is the runs of one approach at one number of training photos per class, summarised
as `imageclf compare` summarises them; x is the photos per class the runs had; what is short or unfinished is named."""

import json
from pathlib import Path

import pytest

from imageclf.study.compare import Run, Unfinished, compare_runs, wilson_interval
from imageclf.study.curve import build_curve, markdown_report, rows, text_table


def made_run(name: str, mode: str, size: int | str, seed: int, correct: int, images: int = 20, **extra: object) -> Run:
    params = {
        **{key.replace("__", "."): value for key, value in extra.items()},
        "train.model": "efficientnet_lite0",
        "train.mode": mode,
        "split.train_per_class": size,
        "split.seed": seed,
        "train.seed": 42,
        "augment.seed": 42,
    }
    predictions = {f"photo_{i}.jpg": ("cat", "cat" if i < correct else "dog") for i in range(images)}
    return Run(name, "workspace", params, correct, images, 0.5, 10.0 * seed, predictions)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The split details every run here reads (as the workspace's): 8 cats, 5 dogs and 8 horses for training."""
    details = {"images": {"train": {"cat": 8, "dog": 5, "horse": 8, "total": 21}}, "classes_with_fewer": ["dog"]}
    (tmp_path / "metrics/details").mkdir(parents=True)
    (tmp_path / "metrics/details/split.json").write_text(json.dumps(details))
    return tmp_path


def test_each_point_is_what_compare_reports_for_its_runs(project: Path) -> None:
    runs = [
        made_run("head-3-42", "transfer_learning", 3, 42, 15),
        made_run("head-3-1", "transfer_learning", 3, 1, 17),
        made_run("head-all-42", "transfer_learning", "all", 42, 19),
        made_run("zero-3-42", "fromzero", 3, 42, 9),
    ]
    curve = build_curve(project, runs, [])
    lines = {line.approach: line for line in curve.lines}
    head_name, zero_name = "efficientnet_lite0, transfer_learning", "efficientnet_lite0, fromzero"
    assert set(lines) == {head_name, zero_name}, "named by model and mode"
    head = lines[head_name]
    assert [point.train_per_class for point in head.points] == [3, "all"]
    three = head.points[0]
    (expected,) = compare_runs(runs[:2]).rows
    assert three.accuracy == expected.accuracy and three.runs == ["head-3-42", "head-3-1"]
    assert three.train_seconds == expected.train_seconds == 215.0
    (single,) = lines[zero_name].points
    assert single.accuracy.interval == wilson_interval(9, 20), "one run: Wilson's interval of its photos"
    assert three.photos_per_class == pytest.approx(7.0) and three.classes_with_fewer == ["dog"]
    assert [row["accuracy"] for row in rows(curve)] == [0.8, 0.95, 0.45]


def test_approaches_of_one_model_and_mode_are_named_by_the_other_params_that_differ(project: Path) -> None:
    runs = [
        made_run("small", "fromzero", 3, 42, 9, data__image_size=128),
        made_run("large", "fromzero", 3, 42, 12, data__image_size=256),
        made_run("head", "transfer_learning", 3, 42, 19, data__image_size=256),
    ]
    names = [line.approach for line in build_curve(project, runs, []).lines]
    assert names == [
        "efficientnet_lite0, fromzero (data.image_size=128)",
        "efficientnet_lite0, fromzero (data.image_size=256)",
        "efficientnet_lite0, transfer_learning (data.image_size=256)",
    ]


def test_short_classes_and_unfinished_runs_are_named(project: Path) -> None:
    waiting = Unfinished("exp-waiting", {"split.seed": 2, "split.train_per_class": 100}, "queued")
    other = Unfinished("main", {"split.seed": 42}, "failed or not run")  # not a point of the curve
    curve = build_curve(project, [made_run("only", "transfer_learning", 10, 42, 18)], [waiting, other])
    text = text_table(curve)
    assert "not in the curve: exp-waiting (split.seed=2, split.train_per_class=100), queued" in text
    assert "main" not in text.split("not in the curve")[-1]
    assert "dog had fewer training photos and used them all" in text
    report = markdown_report(curve, "curve.png")
    assert "![test accuracy against training photos per class](curve.png)" in report and "| 10 | 7 | 1 |" in report
