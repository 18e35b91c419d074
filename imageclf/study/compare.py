"""`imageclf compare`: compare DVC experiments: mean, spread, 95 % intervals, paired tests. Repeated runs of one
configuration form one row.

On a few hundred test photos one photo moves accuracy by a quarter point, and a new split seed alone moves a run
by a photo or two; a single number cannot tell a real difference from that noise. Each row gives the mean, the
spread and a 95 % interval (SciPy: the t interval of the mean across seeds; Wilson's interval of the photos for
a single run, or for runs that all scored the same), and two configurations scored on the same test photos get a
paired exact McNemar test on their per-photo predictions.
"""

import argparse
import csv
import io
import json
import math
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

from scipy.stats import binomtest, t

from imageclf.core import paths
from imageclf.core.errors import UserError, warn
from imageclf.core.files import write_atomic

EVALUATE_METRICS = (paths.METRICS_DIR / paths.EVALUATE_METRICS).as_posix()
EVALUATE_DETAILS = (paths.METRICS_DIR / paths.DETAILS_DIR / paths.EVALUATE_METRICS).as_posix()
PREDICTIONS = (paths.METRICS_DIR / paths.TEST_PREDICTIONS).as_posix()
TRAIN_TIME = (paths.METRICS_DIR / paths.TRAIN_TIME).as_posix()
SEED_PARAMS = ("split.seed", "augment.seed", "train.seed")
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Run:
    """One finished experiment: its params (flattened to dotted keys), test metrics and per-photo predictions."""

    name: str
    rev: str
    params: dict[str, object]
    correct: int
    images: int
    macro_f1: float
    train_seconds: float | None
    predictions: dict[str, tuple[str, str]] | None  # photo path -> (actual, predicted)

    @property
    def accuracy(self) -> float:
        return self.correct / self.images

    @property
    def configuration(self) -> tuple:
        """The params without the seeds: runs that differ only by seed are repeats of one configuration."""
        return tuple((key, json.dumps(value)) for key, value in sorted(self.params.items()) if key not in SEED_PARAMS)

    @property
    def seeds(self) -> dict[str, object]:
        return {key: self.params.get(key) for key in SEED_PARAMS}


@dataclass(frozen=True)
class Spread:
    """Mean, standard deviation (none for one run), min, max and 95 % interval of one metric over a row's runs."""

    mean: float
    sd: float | None
    low: float
    high: float
    interval: tuple[float, float] | None

    @classmethod
    def of(cls, values: list[float], photo_interval: tuple[float, float] | None = None) -> "Spread":
        """Across runs that differ, the t interval of the mean, cut to [0, 1]. For a single run, or runs that all
        scored the same (the t interval would have no width), `photo_interval`: Wilson's interval of the photos."""
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else None
        if not sd:
            return cls(mean, sd, min(values), max(values), photo_interval)
        half_width = t.ppf((1 + CONFIDENCE) / 2, len(values) - 1) * sd / math.sqrt(len(values))
        interval = (max(0.0, mean - half_width), min(1.0, mean + half_width))  # a share lies in [0, 1]
        return cls(mean, sd, min(values), max(values), interval)


@dataclass(frozen=True)
class Row:
    """One configuration: its name (the params that set it apart) and its runs summarised."""

    name: str
    runs: list[str]
    accuracy: Spread
    macro_f1: Spread
    train_seconds: float | None


@dataclass(frozen=True)
class PairedTest:
    """McNemar's exact test of two configurations on the same test photos: the photos only one got right."""

    first: str
    second: str
    seeds: dict[str, object]
    photos: int
    only_first_right: list[str]
    only_second_right: list[str]
    p_value: float


@dataclass(frozen=True)
class Comparison:
    rows: list[Row]
    paired_tests: list[PairedTest] = field(default_factory=list)


def wilson_interval(correct: int, images: int) -> tuple[float, float]:
    interval = binomtest(correct, images).proportion_ci(CONFIDENCE, method="wilson")
    return interval.low, interval.high


def mcnemar_p_value(only_first_right: int, only_second_right: int) -> float:
    """Exact two-sided McNemar: under no difference each discordant photo is a fair coin toss."""
    discordant = only_first_right + only_second_right
    return 1.0 if discordant == 0 else binomtest(only_first_right, discordant, 0.5).pvalue


def flatten(values: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def dvc(arguments: list[str], project: Path) -> str:
    try:
        result = subprocess.run(["dvc", *arguments], cwd=project, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("the `dvc` command is not installed: pip install -r requirements.txt") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise UserError(f"`dvc {' '.join(arguments)}` failed in {project}: {lines[-1] if lines else 'no output'}")
    return result.stdout


def file_at(project: Path, rev: str, path: str) -> str | None:
    """A git-tracked file's text at `rev` (the workspace's own file for "workspace"); None where it is missing."""
    if rev == "workspace":
        file = project / path
        return file.read_text() if file.is_file() else None
    result = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=project, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def read_predictions(text: str) -> dict[str, tuple[str, str]]:
    return {row["path"]: (row["actual"], row["predicted"]) for row in csv.DictReader(io.StringIO(text))}


def revision_name(entry: dict) -> str:
    """An experiment's or branch's name, "workspace", or a commit's short hash."""
    return entry.get("name") or (entry["rev"] if entry["rev"] == "workspace" else entry["rev"][:7])


def shown_revisions(shown: list[dict]) -> list[tuple[str, dict]]:
    """(name, data) of each experiment, then each commit, then the workspace, in `dvc exp show --json`.

    Experiments come first because `dvc exp run` made their outputs from their params; a commit or the workspace
    may hold params edited after its outputs were made (params.yaml changed and committed without `dvc repro`),
    and must not stand in for the experiment that ran those params. An experiment running in the workspace is
    listed with the rev "workspace" and the workspace's files, which still hold the previous experiment's results:
    it is left out until it has finished and has a commit.
    """
    experiments, commits = [], []
    for commit in shown:
        if commit.get("data"):
            commits.append((revision_name(commit), commit["data"]))
        for experiment in commit.get("experiments") or []:
            for revision in experiment.get("revs") or []:
                if revision.get("data") and revision["rev"] != "workspace":
                    experiments.append((revision_name(revision), revision["data"]))
    commits.sort(key=lambda revision: revision[0] == "workspace")
    return experiments + commits


def run_of(project: Path, name: str, data: dict) -> Run | None:
    """The finished run of one revision, or None where it has no test metrics (queued, running or failed)."""
    headline = (data.get("metrics") or {}).get(EVALUATE_METRICS, {}).get("data")
    params = (data.get("params") or {}).get("params.yaml", {}).get("data")
    if not headline or not params:
        return None
    rev = data["rev"]
    details = file_at(project, rev, EVALUATE_DETAILS)
    scores = json.loads(details) if details else headline  # evaluate.json held every score before details/ existed
    if "images" not in scores:
        return None
    predictions = file_at(project, rev, PREDICTIONS)
    train_time = file_at(project, rev, TRAIN_TIME)
    return Run(
        name=name,
        rev=rev,
        params=flatten(params),
        correct=int(scores["correct"]),
        images=int(scores["images"]),
        macro_f1=float(scores["macro_avg"]["f1"]),
        train_seconds=float(json.loads(train_time)["seconds"]) if train_time else None,
        predictions=read_predictions(predictions) if predictions else None,
    )


def executor_states(shown: list[dict]) -> dict[str, str]:
    """The state DVC's queue reports for each experiment revision it knows of (queued, running, failed, ...)."""
    return {
        revision["rev"]: experiment["executor"]["state"]
        for commit in shown
        for experiment in commit.get("experiments") or []
        if experiment.get("executor")
        for revision in experiment.get("revs") or []
    }


@dataclass(frozen=True)
class Unfinished:
    """A revision without test metrics: its name, its params (flattened) and why (DVC's queue state, if any)."""

    name: str
    params: dict[str, object]
    state: str


def load_experiments(project: Path, names: list[str], all_commits: bool) -> tuple[list[Run], list[Unfinished]]:
    """The finished runs `dvc exp show` lists (of every commit with `all_commits`), or those named, and the
    revisions that have not finished.

    The pipeline is deterministic, so revisions with the same params are one run shown twice (the workspace
    after `dvc exp run` holds the last experiment's results): each set of params counts once, under its
    first name in `shown_revisions`' order (experiments, then commits, then the workspace).
    """
    shown = json.loads(dvc(["exp", "show", "--json", *(["--all-commits"] if all_commits else [])], project) or "[]")
    revisions = shown_revisions(shown)
    if names:
        known = {name for name, _ in revisions} | {data["rev"] for _, data in revisions}
        missing = [name for name in names if name not in known]
        if missing:
            raise UserError(f"no experiment named {', '.join(missing)}: `dvc exp show` lists the names")
        revisions = [(name, data) for name, data in revisions if name in names or data["rev"] in names]
    states = executor_states(shown)
    runs: dict[str, Run] = {}
    unfinished = []
    for name, data in revisions:
        run = run_of(project, name, data)
        if run is not None:
            runs.setdefault(json.dumps(run.params, sort_keys=True), run)
        elif name != "workspace":
            params = flatten((data.get("params") or {}).get("params.yaml", {}).get("data") or {})
            unfinished.append(Unfinished(name, params, states.get(data["rev"], "failed or not run")))
    return list(runs.values()), unfinished


def load_runs(project: Path, names: list[str], all_commits: bool) -> list[Run]:
    """`load_experiments`' finished runs; each unfinished one named is warned about, none finished is an error."""
    runs, unfinished = load_experiments(project, names, all_commits)
    if names:
        for revision in unfinished:
            warn(f"experiment {revision.name} has no {EVALUATE_METRICS} ({revision.state}): left out")
    if not runs:
        raise UserError(
            f"no finished experiment with {EVALUATE_METRICS}: run `dvc exp run` (or `dvc queue start`) and wait"
        )
    return runs


def row_names(configurations: list[tuple]) -> list[str]:
    """Each configuration named by the params whose values differ between configurations."""
    if len(configurations) == 1:
        return ["all runs"]
    keys = sorted({key for configuration in configurations for key, _ in configuration})
    settings = [dict(configuration) for configuration in configurations]
    differing = [key for key in keys if len({setting.get(key) for setting in settings}) > 1]
    return [", ".join(f"{key}={shown_value(setting.get(key))}" for key in differing) for setting in settings]


def shown_value(encoded: str | None) -> str:
    """A param value as `dvc exp run -S` takes it: resnet18, not "resnet18"."""
    if encoded is None:
        return "unset"
    value = json.loads(encoded)
    return value if isinstance(value, str) else encoded


def paired_test(first: Run, second: Run, first_name: str, second_name: str) -> PairedTest | None:
    """McNemar's test of two runs on the same photos; None, with a warning, where that cannot be done."""
    for run in (first, second):
        if run.predictions is None:
            warn(f"experiment {run.name} has no {PREDICTIONS}: rerun its evaluate stage for a paired test")
            return None
    if first.predictions.keys() != second.predictions.keys() or any(
        first.predictions[photo][0] != second.predictions[photo][0] for photo in first.predictions
    ):
        warn(
            f"experiments {first.name} and {second.name} have the same seeds but not the same test photos "
            f"(another data.raw_dir or split?): no paired test"
        )
        return None
    photos = sorted(first.predictions)
    right_first = {photo for photo in photos if first.predictions[photo][0] == first.predictions[photo][1]}
    right_second = {photo for photo in photos if second.predictions[photo][0] == second.predictions[photo][1]}
    only_first, only_second = sorted(right_first - right_second), sorted(right_second - right_first)
    return PairedTest(
        first_name,
        second_name,
        first.seeds,
        len(photos),
        only_first,
        only_second,
        mcnemar_p_value(len(only_first), len(only_second)),
    )


def compare_runs(runs: list[Run]) -> Comparison:
    """Group the runs by configuration, summarise each row, and test every two rows on their shared seeds."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.configuration, []).append(run)
    names = row_names(list(groups))
    rows = []
    for name, members in zip(names, groups.values(), strict=True):
        photos = wilson_interval(sum(run.correct for run in members), sum(run.images for run in members))
        seconds = [run.train_seconds for run in members if run.train_seconds is not None]
        rows.append(
            Row(
                name,
                [run.name for run in members],
                Spread.of([run.accuracy for run in members], photos),
                Spread.of([run.macro_f1 for run in members]),
                statistics.fmean(seconds) if seconds else None,
            )
        )
    named_groups = list(zip(names, groups.values(), strict=True))
    pairs = [
        (first, second, first_name, second_name)
        for (first_name, first_runs), (second_name, second_runs) in combinations(named_groups, 2)
        for first in first_runs
        for second in second_runs
        if first.seeds == second.seeds
    ]
    tests = [test for test in (paired_test(*pair) for pair in pairs) if test is not None]
    if len(rows) > 1 and not pairs:
        warn("no two configurations share their seeds: run them on the same split.seed for a paired test")
    return Comparison(rows, tests)


def percent(value: float) -> str:
    return f"{100 * value:.2f}"


def interval_text(spread: Spread) -> str:
    return "–" if spread.interval is None else f"{percent(spread.interval[0])}–{percent(spread.interval[1])}"


def mean_text(spread: Spread) -> str:
    return percent(spread.mean) + ("" if spread.sd is None else f" ± {percent(spread.sd)}")


def table_rows(comparison: Comparison) -> list[list[str]]:
    header = [
        "configuration",
        "runs",
        "accuracy % (mean ± sd)",
        "min–max",
        "95 % interval",
        "macro-F1 % (mean ± sd)",
        "95 % interval",
        "train s",
    ]
    rows = [header]
    for row in comparison.rows:
        rows.append(
            [
                row.name,
                str(len(row.runs)),
                mean_text(row.accuracy),
                f"{percent(row.accuracy.low)}–{percent(row.accuracy.high)}",
                interval_text(row.accuracy),
                mean_text(row.macro_f1),
                interval_text(row.macro_f1),
                "–" if row.train_seconds is None else f"{row.train_seconds:.0f}",
            ]
        )
    return rows


def test_lines(comparison: Comparison) -> list[str]:
    lines = []
    for test in comparison.paired_tests:
        seeds = ", ".join(f"{key}={value}" for key, value in test.seeds.items())
        lines.append(
            f"{test.first} vs {test.second} ({seeds}; {test.photos} photos): only the first right on "
            f"{len(test.only_first_right)}, only the second on {len(test.only_second_right)}, "
            f"McNemar exact p = {test.p_value:.4g}"
        )
    return lines


def text_table(comparison: Comparison) -> str:
    rows = table_rows(comparison)
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join([*lines, *(["", *test_lines(comparison)] if comparison.paired_tests else [])])


def accuracy_figure(comparison: Comparison, path: Path) -> None:
    """Accuracy with its 95 % interval per configuration, against training time where every row has one."""
    from matplotlib.figure import Figure

    from imageclf.evaluation.reports import save_figure

    timed = all(row.train_seconds is not None for row in comparison.rows)
    figure = Figure(layout="constrained", figsize=(7, 4.5))
    axes = figure.subplots()
    for index, row in enumerate(comparison.rows):
        x = row.train_seconds if timed else index
        low, high = row.accuracy.interval or (row.accuracy.mean, row.accuracy.mean)
        mean = 100 * row.accuracy.mean
        axes.errorbar(x, mean, yerr=[[mean - 100 * low], [100 * high - mean]], fmt="o", capsize=4, label=row.name)
    if timed:
        axes.set_xlabel("training time, seconds (mean over runs)")
    else:
        axes.set_xticks(range(len(comparison.rows)), [str(index + 1) for index in range(len(comparison.rows))])
        axes.set_xlabel("configuration (no training time recorded)")
    axes.set(ylabel="test accuracy, % (95 % interval)", title="Accuracy per configuration")
    axes.legend(fontsize="small")
    save_figure(figure, path)


def markdown_report(comparison: Comparison, plot_name: str) -> str:
    rows = table_rows(comparison)
    lines = ["# Experiments compared", ""]
    lines += ["| " + " | ".join(row) + " |" for row in rows[:1]]
    lines += ["|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    runs = "; ".join(f"{row.name}: {', '.join(row.runs)}" for row in comparison.rows)
    lines += ["", f"Runs per configuration: {runs}"]
    lines += ["", f"![Accuracy with 95 % intervals]({plot_name})", "", "## Paired tests (McNemar, exact)", ""]
    for test, line in zip(comparison.paired_tests, test_lines(comparison), strict=True):
        lines.append(f"- {line}")
        sides = (("only the first right", test.only_first_right), ("only the second right", test.only_second_right))
        for label, photos in sides:
            if photos:
                lines.append(f"  - {label}: " + ", ".join(f"`{photo}`" for photo in photos))
    if not comparison.paired_tests:
        lines.append("None: no two configurations were run with the same seeds.")
    return "\n".join(lines) + "\n"


def compare_command(names: list[str], all_commits: bool, as_json: bool, report: Path | None) -> int:
    comparison = compare_runs(load_runs(Path.cwd(), names, all_commits))
    if as_json:
        print(json.dumps(asdict(comparison), indent=2))
    else:
        print(text_table(comparison))
    if report is not None:
        plot = report.with_suffix(".png")
        accuracy_figure(comparison, plot)
        write_atomic(report, markdown_report(comparison, plot.name).encode())
        if not as_json:
            print(f"\nreport: {report} (plot: {plot})")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Group finished DVC experiments by their params without the seeds; per configuration the accuracy and "
        "macro-F1 mean, sd, min-max and 95 % interval; McNemar's exact test between configurations run with the "
        "same seeds."
    )
    parser.add_argument(
        "experiments", nargs="*", metavar="EXP", help="experiment names or revisions (default: all that are shown)"
    )
    parser.add_argument(
        "--all", action="store_true", help="the experiments of every commit, not only of HEAD (dvc exp show -A)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--report", type=Path, metavar="FILE.md", help="also write a Markdown report, with its plot beside it (.png)"
    )


def run(args: argparse.Namespace) -> int:
    return compare_command(args.experiments, args.all, args.json, args.report)
