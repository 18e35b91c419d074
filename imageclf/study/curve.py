"""`imageclf curve`: how many photos per class each approach needs: test accuracy against training photos per class,
one line per approach, drawn from finished DVC experiments.

Queue each approach's points with `imageclf repeat --train-per-class 30 100 300 1000 all -S KEY=VALUE ...` and run
them (`dvc queue start`). A point is the runs of one approach at one `split.train_per_class` over the split seeds,
summarised exactly as `imageclf compare` summarises them (the mean; the t interval across seeds, or Wilson's interval
of the photos for a single run); its x is the number of training photos per class the runs really had
(`metrics/details/split.json`), so a class with fewer photos than asked shows, and is named. Runs still queued,
running or failed are named too; the curve covers what has finished.
"""

import argparse
import csv
import io
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from imageclf.core import paths
from imageclf.core.errors import UserError
from imageclf.core.files import write_atomic
from imageclf.study.compare import (
    Run,
    Spread,
    Unfinished,
    compare_runs,
    file_at,
    interval_text,
    load_experiments,
    mean_text,
    row_names,
)

SIZE_PARAM = "split.train_per_class"
SPLIT_DETAILS = (paths.METRICS_DIR / paths.DETAILS_DIR / paths.SPLIT_METRICS).as_posix()


@dataclass(frozen=True)
class Point:
    """One approach at one `split.train_per_class`: the photos per class its runs had, and their test accuracy."""

    train_per_class: int | str
    photos_per_class: float
    runs: list[str]
    accuracy: Spread
    train_seconds: float | None
    classes_with_fewer: list[str]


@dataclass(frozen=True)
class Line:
    approach: str
    points: list[Point]


@dataclass(frozen=True)
class Curve:
    lines: list[Line]
    unfinished: list[Unfinished]


def training_photos(project: Path, run: Run) -> tuple[float, list[str]]:
    """The mean number of training photos per class of a run, and the classes that had fewer than it asked for."""
    text = file_at(project, run.rev, SPLIT_DETAILS)
    if text is None:
        raise UserError(f"experiment {run.name} has no {SPLIT_DETAILS}: rerun it with this version (dvc exp run)")
    details = json.loads(text)
    counts = [count for label, count in details["images"]["train"].items() if label != "total"]
    return statistics.fmean(counts), details.get("classes_with_fewer", [])


def approach_of(run: Run) -> tuple:
    """A run's configuration without the seeds and the number of photos: the runs of one line."""
    return tuple(item for item in run.configuration if item[0] != SIZE_PARAM)


def approach_names(approaches: list[tuple]) -> list[str]:
    """Each approach by its model and mode, then the other params that set it apart from the rest (as
    `compare.row_names` finds them), e.g. "original, fromzero (data.image_size=128, train.epochs=10)"."""
    names = []
    differing = row_names(approaches) if len(approaches) > 1 else [""] * len(approaches)
    for approach, apart in zip(approaches, differing, strict=True):
        settings = {key: json.loads(value) for key, value in approach}
        others = [item for item in apart.split(", ") if item and not item.startswith(("train.model=", "train.mode="))]
        name = f"{settings.get('train.model')}, {settings.get('train.mode')}"
        names.append(f"{name} ({', '.join(others)})" if others else name)
    return names


def build_curve(project: Path, runs: list[Run], unfinished: list[Unfinished]) -> Curve:
    """Group the finished runs into lines and points, each point summarised by `compare.compare_runs`."""
    lines: dict[tuple, dict[object, list[Run]]] = {}
    for run in runs:
        lines.setdefault(approach_of(run), {}).setdefault(run.params.get(SIZE_PARAM, "all"), []).append(run)
    built = []
    for name, by_size in zip(approach_names(list(lines)), lines.values(), strict=True):
        points = []
        for size, members in by_size.items():
            (row,) = compare_runs(members).rows
            photos = [training_photos(project, run) for run in members]
            points.append(
                Point(
                    size,
                    statistics.fmean(count for count, _ in photos),
                    row.runs,
                    row.accuracy,
                    row.train_seconds,
                    sorted({label for _, fewer in photos for label in fewer}),
                )
            )
        built.append(Line(name, sorted(points, key=lambda point: point.photos_per_class)))
    queued = [revision for revision in unfinished if SIZE_PARAM in revision.params]
    return Curve(built, queued)


def rows(curve: Curve) -> list[dict]:
    """The data behind the plot, one row per point: what the CSV holds (`dvc plots show` can draw it)."""
    return [
        {
            "approach": line.approach,
            "train_per_class": point.train_per_class,
            "photos_per_class": round(point.photos_per_class, 1),
            "runs": len(point.runs),
            "accuracy": point.accuracy.mean,
            "interval_low": point.accuracy.interval[0] if point.accuracy.interval else None,
            "interval_high": point.accuracy.interval[1] if point.accuracy.interval else None,
            "train_seconds": point.train_seconds,
        }
        for line in curve.lines
        for point in line.points
    ]


def notes(curve: Curve) -> list[str]:
    """What the reader must know besides the numbers: short classes and runs that have not finished."""
    lines = []
    for line in curve.lines:
        for point in line.points:
            if point.classes_with_fewer:
                lines.append(
                    f"{line.approach}, {SIZE_PARAM}={point.train_per_class}: {', '.join(point.classes_with_fewer)} "
                    f"had fewer training photos and used them all ({point.photos_per_class:.0f} per class on average)"
                )
    for revision in curve.unfinished:
        setting = ", ".join(f"{key}={revision.params.get(key)}" for key in ("split.seed", SIZE_PARAM))
        lines.append(f"not in the curve: {revision.name} ({setting}), {revision.state}")
    return lines


def text_table(curve: Curve) -> str:
    header = ["approach", "photos/class", "runs", "accuracy % (mean ± sd)", "95 % interval", "train s"]
    table = [header] + [
        [
            line.approach,
            f"{point.photos_per_class:.0f}",
            str(len(point.runs)),
            mean_text(point.accuracy),
            interval_text(point.accuracy),
            "–" if point.train_seconds is None else f"{point.train_seconds:.0f}",
        ]
        for line in curve.lines
        for point in line.points
    ]
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    text = "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in table)
    return "\n".join([text, *notes(curve)])


def plot(curve: Curve, path: Path) -> None:
    """Test accuracy (mean and 95 % interval) against training photos per class, on a log axis."""
    from matplotlib.figure import Figure

    from imageclf.evaluation.reports import save_figure

    figure = Figure(layout="constrained", figsize=(7, 5))
    axes = figure.subplots()
    for line in curve.lines:
        x = [point.photos_per_class for point in line.points]
        y = [100 * point.accuracy.mean for point in line.points]
        low = [100 * (point.accuracy.interval or (point.accuracy.mean,) * 2)[0] for point in line.points]
        high = [100 * (point.accuracy.interval or (point.accuracy.mean,) * 2)[1] for point in line.points]
        axes.plot(x, y, marker="o", label=line.approach)
        axes.fill_between(x, low, high, alpha=0.15)
    axes.set(
        xscale="log",
        xlabel="training photos per class",
        ylabel="test accuracy % (mean, 95 % interval)",
        title="How many photos each approach needs",
    )
    for level in (90, 99):  # where each approach gets there is what the study notes' table asks
        axes.axhline(level, color="grey", linewidth=0.8, linestyle=":")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    save_figure(figure, path)


def markdown_report(curve: Curve, plot_name: str) -> str:
    lines = ["# Learning curve", "", f"![test accuracy against training photos per class]({plot_name})", ""]
    lines += [
        "| approach | `split.train_per_class` | photos per class | runs | test accuracy % (mean ± sd) | 95 % interval "
        "| train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for line in curve.lines:
        for point in line.points:
            seconds = "–" if point.train_seconds is None else f"{point.train_seconds:.0f}"
            lines.append(
                f"| {line.approach} | {point.train_per_class} | {point.photos_per_class:.0f} | {len(point.runs)} "
                f"| {mean_text(point.accuracy)} | {interval_text(point.accuracy)} | {seconds} |"
            )
    extra = notes(curve)
    if extra:
        lines += ["", *(f"- {note}" for note in extra)]
    return "\n".join(lines) + "\n"


def write_data(curve: Curve, report: Path) -> None:
    """The rows as CSV and the whole curve as JSON, beside the report."""
    table = rows(curve)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    write_atomic(report.with_suffix(".csv"), buffer.getvalue().encode())
    write_atomic(report.with_suffix(".json"), (json.dumps(asdict(curve), indent=2) + "\n").encode())


def curve_command(all_commits: bool, as_json: bool, report: Path | None) -> int:
    project = Path.cwd()
    runs, unfinished = load_experiments(project, [], all_commits)
    with_sizes = [run for run in runs if SIZE_PARAM in run.params]
    if not with_sizes:
        raise UserError(
            "no finished experiment with split.train_per_class: queue the points with imageclf repeat "
            "--train-per-class 30 100 300 all -S ..., then dvc queue start"
        )
    curve = build_curve(project, with_sizes, unfinished)
    print(json.dumps(asdict(curve), indent=2) if as_json else text_table(curve))
    if report is not None:
        plot(curve, report.with_suffix(".png"))
        write_data(curve, report)
        write_atomic(report, markdown_report(curve, report.with_suffix(".png").name).encode())
        if not as_json:
            print(f"\nreport: {report} (plot {report.with_suffix('.png')}, data {report.with_suffix('.csv')})")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--all", action="store_true", help="the experiments of every commit, not only of HEAD (dvc exp show -A)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE.md",
        help="also write a Markdown report, with its plot (.png) and data (.csv, .json) beside it",
    )


def run(args: argparse.Namespace) -> int:
    return curve_command(args.all, args.json, args.report)
