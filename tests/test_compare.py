"""`imageclf compare`: repeated runs of a configuration form one row with its spread and 95 % interval, and
configurations scored on the same photos get McNemar's exact test; values checked against hand computations."""

import json
import math
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
import yaml
from scipy.stats import binomtest

from imageclf.core.errors import UserError
from imageclf.study.compare import Run, compare_runs, load_runs, mcnemar_p_value, shown_revisions
from imageclf.study.repeat import repeat_command
from tests.helpers import copy_project, without_git_identity

T_975_ONE_DEGREE = 12.706204736174698  # Student's t, 97.5 % quantile, 1 degree of freedom (two runs)
T_975_TWO_DEGREES = 4.302652729911275  # 2 degrees of freedom (three runs)
Z_975 = 1.959963984540054


def run(command: list[str], project: Path, env: dict[str, str], timeout: float = 120) -> str:
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def made_run(name: str, lr: float, seed: int, right: list[bool], macro_f1: float = 0.5) -> Run:
    """A run of `train.lr` = `lr` on split seed `seed` that got photo i right where right[i]."""
    predictions = {f"photo_{i}.jpg": ("cat", "cat" if ok else "dog") for i, ok in enumerate(right)}
    params = {"train.lr": lr, "train.model": "original", "split.seed": seed, "train.seed": 42, "augment.seed": 42}
    return Run(name, name, params, sum(right), len(right), macro_f1, None, predictions)


def test_repeats_form_one_row_with_mean_sd_and_the_t_interval_of_the_mean() -> None:
    runs = [
        made_run(f"a{seed}", 0.001, seed, [True] * correct + [False] * (10 - correct))
        for seed, correct in ((1, 7), (2, 8), (3, 9))
    ] + [made_run("b1", 0.01, 1, [True] * 10)]
    comparison = compare_runs(runs)
    rows = {row.name: row for row in comparison.rows}
    assert set(rows) == {"train.lr=0.001", "train.lr=0.01"}, "named by the one param that differs, seeds left out"
    other_model = Run("r", "r", {**runs[-1].params, "train.model": "resnet18"}, 5, 10, 0.5, None, None)
    named = {row.name for row in compare_runs([*runs, other_model]).rows}
    assert "train.lr=0.01, train.model=resnet18" in named, "a string as dvc exp run -S takes it, unquoted"
    repeated = rows["train.lr=0.001"]
    assert repeated.runs == ["a1", "a2", "a3"]
    assert repeated.accuracy.mean == pytest.approx(0.8)
    assert repeated.accuracy.sd == pytest.approx(0.1)  # sample sd of 0.7, 0.8, 0.9
    assert (repeated.accuracy.low, repeated.accuracy.high) == (pytest.approx(0.7), pytest.approx(0.9))
    half_width = T_975_TWO_DEGREES * 0.1 / math.sqrt(3)
    assert repeated.accuracy.interval == (pytest.approx(0.8 - half_width), 1.0), "0.8 + 0.248 is cut to 100 %"


def wilson_by_hand(correct: int, n: int) -> tuple[float, float]:
    p, z = correct / n, Z_975
    centre, spread = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


def test_a_single_run_gets_wilsons_interval() -> None:
    (row,) = compare_runs([made_run("only", 0.001, 1, [True] * 9 + [False])]).rows
    assert row.accuracy.sd is None
    assert row.accuracy.interval == pytest.approx(wilson_by_hand(9, 10))


def test_runs_that_all_scored_the_same_get_wilsons_interval_of_their_photos_not_a_zero_width_one() -> None:
    (row,) = compare_runs([made_run(f"s{seed}", 0.001, seed, [True] * 9 + [False]) for seed in (1, 2)]).rows
    assert row.accuracy.sd == 0
    assert row.accuracy.interval == pytest.approx(wilson_by_hand(18, 20))


def test_mcnemar_pairs_runs_on_the_same_seed_and_names_the_photos_only_one_got_right() -> None:
    # photo 0: only b right; photos 1-6: only a right; 7-9: both right
    a = made_run("a", 0.001, 1, [False] + [True] * 9)
    b = made_run("b", 0.01, 1, [True] + [False] * 6 + [True] * 3)
    other_split = made_run("c", 0.01, 2, [True] * 10)
    (test,) = compare_runs([a, b, other_split]).paired_tests
    assert (test.first, test.second) == ("train.lr=0.001", "train.lr=0.01")
    assert test.only_first_right == [f"photo_{i}.jpg" for i in range(1, 7)]
    assert test.only_second_right == ["photo_0.jpg"]
    assert test.p_value == pytest.approx(2 * (1 + 7) / 2**7)  # two-sided exact: 2 × P(X ≤ 1), X ~ Bin(7, 1/2)
    assert mcnemar_p_value(0, 0) == 1.0


def test_a_run_without_predictions_or_with_other_photos_gets_one_line_and_no_paired_test(capsys) -> None:
    a = made_run("a", 0.001, 1, [True, False])
    without = Run("nopred", "nopred", {**a.params, "train.lr": 0.01}, 1, 2, 0.5, None, None)
    assert compare_runs([a, without]).paired_tests == []
    warning = capsys.readouterr().err.strip()
    assert (
        warning
        == "warning: experiment nopred has no metrics/test_predictions.csv: rerun its evaluate stage for a paired test"
    )

    elsewhere = made_run("elsewhere", 0.01, 1, [True, False])
    elsewhere.predictions["moved.jpg"] = elsewhere.predictions.pop("photo_0.jpg")
    assert compare_runs([a, elsewhere]).paired_tests == []
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "a and elsewhere have the same seeds but not the same test photos" in lines[0]


def test_an_experiment_still_running_in_the_workspace_is_left_out_and_experiments_come_first() -> None:
    """`dvc exp show --json` (DVC 3) while `dvc exp run` runs in the workspace: the running experiment has the rev
    "workspace" and the workspace's files, the previous experiment's results, which must not count as its own.
    Finished experiments come before commits and the workspace, whose outputs may predate their params (a
    params.yaml edited and committed without `dvc repro` once made a curve's point average in the sample's run)."""
    finished = {"rev": "2978cd0663f4b4df36bb0266db42e371cb7e8f41", "timestamp": "2026-11-29T19:04:23", "meta": {}}
    running = {"rev": "workspace", "timestamp": None, "meta": {}}
    shown = [
        {
            "rev": "workspace",
            "name": None,
            "data": running,
            "experiments": [
                {"revs": [{"rev": "workspace", "name": "grid-b", "error": None, "experiments": None, "data": running}]},
                {
                    "revs": [
                        {"rev": finished["rev"], "name": "grid-a", "error": None, "experiments": None, "data": finished}
                    ]
                },
            ],
        },
        {"rev": "9c1e0b2f" * 5, "name": "main", "data": {"rev": "9c1e0b2f" * 5, "meta": {}}, "experiments": None},
    ]
    assert [name for name, _ in shown_revisions(shown)] == ["grid-a", "main", "workspace"]


def test_no_finished_experiment_is_one_line(tmp_path: Path) -> None:
    env = without_git_identity(tmp_path / "home")
    run(["git", "init", "-q"], tmp_path, env)
    run(["dvc", "init", "-q"], tmp_path, env)
    run(["git", "commit", "-qm", "empty"], tmp_path, env)
    with pytest.raises(UserError, match=r"^no finished experiment with metrics/evaluate.json"):
        load_runs(tmp_path, [], all_commits=False)
    with pytest.raises(UserError, match=r"^no experiment named nope"):
        load_runs(tmp_path, ["nope"], all_commits=False)


def test_compare_reads_real_experiments_groups_seeds_and_tests_pairs(reproduced_project: Path, tmp_path: Path) -> None:
    project = shutil.copytree(reproduced_project, tmp_path / "project", symlinks=True)
    env = without_git_identity(tmp_path / "home")
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "baseline"], project, env)  # train.lr 0.001, train.seed 42
    # one after another (no queue workers to start): lr 0.001 is repeated on two seeds, lr 0.03 runs on one of
    # them only, so one row has the t interval, the other Wilson's, and seed 1 has no pair to test
    for lr, seed in ((0.001, 1), (0.03, 42)):
        run(["dvc", "exp", "run", "-S", f"train.lr={lr}", "-S", f"train.seed={seed}"], project, env, timeout=300)

    compare = ["python", "-c", "from imageclf.cli import main; main()", "compare", "--json", "--report", "out/c.md"]
    compared = json.loads(run(compare, project, env))
    assert (project / "out/c.md").is_file() and (project / "out/c.png").read_bytes().startswith(b"\x89PNG")

    # by hand: every finished revision's params and per-photo predictions, straight from git
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project, env))
    revisions = [shown[1]["rev"]] + [experiment["revs"][0]["rev"] for experiment in shown[1]["experiments"]]
    by_run: dict[tuple[float, int], dict[str, bool]] = {}
    for rev in revisions:
        train = yaml.safe_load(run(["git", "show", f"{rev}:params.yaml"], project, env))["train"]
        lines = run(["git", "show", f"{rev}:metrics/test_predictions.csv"], project, env).splitlines()[1:]
        by_run[(train["lr"], train["seed"])] = {
            line.split(",")[0]: line.split(",")[1] == line.split(",")[2] for line in lines
        }
    assert set(by_run) == {(0.001, 42), (0.001, 1), (0.03, 42)}

    rows = {row["name"]: row for row in compared["rows"]}
    assert set(rows) == {"train.lr=0.001", "train.lr=0.03"}
    for lr, seeds in ((0.001, (42, 1)), (0.03, (42,))):
        row = rows[f"train.lr={lr}"]
        accuracies = [statistics.fmean(by_run[(lr, seed)].values()) for seed in seeds]
        assert len(row["runs"]) == len(seeds)
        assert row["train_seconds"] > 0, "metrics/train_time.json of each run"
        assert row["accuracy"]["mean"] == pytest.approx(statistics.fmean(accuracies))
        photos = [right for seed in seeds for right in by_run[(lr, seed)].values()]
        if len(seeds) == 1:  # a single run: no sd, Wilson's interval of its photos
            assert row["accuracy"]["sd"] is None
            expected = wilson_by_hand(sum(photos), len(photos))
        else:
            assert row["accuracy"]["sd"] == pytest.approx(statistics.stdev(accuracies))
            half_width = T_975_ONE_DEGREE * statistics.stdev(accuracies) / math.sqrt(len(seeds))
            mean = statistics.fmean(accuracies)
            expected = (max(0, mean - half_width), min(1, mean + half_width))
            if half_width == 0:  # every run scored the same: Wilson's interval of all their photos
                expected = wilson_by_hand(sum(photos), len(photos))
        assert row["accuracy"]["interval"] == [pytest.approx(expected[0]), pytest.approx(expected[1])]

    tests = {test["seeds"]["train.seed"]: test for test in compared["paired_tests"]}
    assert set(tests) == {42}, "one paired test per seed both configurations ran, none for seed 1 (lr 0.001 only)"
    for seed, test in tests.items():
        first_lr = float(test["first"].split("=")[1])
        second_lr = float(test["second"].split("=")[1])
        first, second = by_run[(first_lr, seed)], by_run[(second_lr, seed)]
        only_first = sorted(photo for photo in first if first[photo] and not second[photo])
        only_second = sorted(photo for photo in first if second[photo] and not first[photo])
        assert test["only_first_right"] == only_first and test["only_second_right"] == only_second
        discordant = len(only_first) + len(only_second)
        expected = binomtest(len(only_first), discordant, 0.5).pvalue if discordant else 1.0
        assert test["p_value"] == pytest.approx(expected)


@pytest.mark.slow
def test_repeat_queues_one_configuration_per_split_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    project = copy_project(tmp_path / "project")
    env = without_git_identity(tmp_path / "home")
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "baseline"], project, env)
    for name in ("HOME", *(name for name in env if name.startswith("GIT_"))):
        monkeypatch.setenv(name, env[name])  # the queued experiments are git commits
    monkeypatch.chdir(project)
    with pytest.raises(UserError, match=r"^-S lr: give a params.yaml key=value"):
        repeat_command(2, ["lr"], [])
    try:
        repeat_command(2, ["train.lr=0.003"], [])
        assert "dvc queue start" in capsys.readouterr().out
        shown = json.loads(run(["dvc", "exp", "show", "--json"], project, env))
        queued = [
            experiment["revs"][0]["data"]["params"]["params.yaml"]["data"] for experiment in shown[1]["experiments"]
        ]
    finally:
        run(["dvc", "queue", "remove", "--all"], project, env)
    assert sorted((params["split"]["seed"], params["train"]["lr"]) for params in queued) == [(1, 0.003), (42, 0.003)]
