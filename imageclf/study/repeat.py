"""`imageclf repeat`: queue one configuration over several split seeds (dvc exp run --queue).

Then `imageclf compare` can tell its spread; start them with `dvc queue start`. With `--train-per-class`, each seed
is queued once per number of training photos per class: the points of `imageclf curve`."""

import argparse
from pathlib import Path

from imageclf.core.arguments import positive_int
from imageclf.core.errors import UserError
from imageclf.study.compare import dvc


def repeat_seeds(runs: int) -> list[int]:
    """The split seeds of `runs` repeats: the shipped 42, then 1, 2, … (the splits docs/results.md reports)."""
    return [42, *range(1, runs)]


def train_per_class(text: str) -> str:
    """An argparse type: a number of training photos per class, 1 or more, or all (as `split.train_per_class`)."""
    if text != "all" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"must be a number of photos, 1 or more, or all; got {text!r}")
    return text


def repeat_command(runs: int, settings: list[str], sizes: list[str]) -> int:
    """Queue one configuration (`settings`, params.yaml key=value) over `runs` split seeds, and over `sizes`
    (`split.train_per_class` values) when given; print what to run next."""
    own = {"split.seed": "repeat sets the split seed itself"}
    if sizes:
        own["split.train_per_class"] = "--train-per-class sets it"
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals or not key or not value:
            raise UserError(f"-S {setting}: give a params.yaml key=value, such as -S train.lr=0.003")
        if key in own:
            raise UserError(f"-S {key}: {own[key]}; give the other params")
    options = [item for setting in settings for item in ("-S", setting)]
    for seed in repeat_seeds(runs):
        for size in sizes or [None]:
            grid = ["-S", f"split.seed={seed}", *(["-S", f"split.train_per_class={size}"] if size else [])]
            dvc(["exp", "run", "--queue", *grid, *options], Path.cwd())
    configuration = " ".join(settings) or "params.yaml as it is"
    seeds = ", ".join(map(str, repeat_seeds(runs)))
    per_size = f" × split.train_per_class {', '.join(sizes)}" if sizes else ""
    print(f"queued {runs * len(sizes or [None])} runs of {configuration} (split.seed {seeds}{per_size}); next:")
    print("  dvc queue start        # run them in the background (or: dvc exp run --run-all, in the foreground)")
    print("  dvc queue status       # which are queued, running, done or failed")
    print("  dvc exp show           # their params and metrics")
    print("  imageclf compare       # each configuration's mean, spread, 95 % interval and paired tests")
    if sizes:
        print("  imageclf curve         # test accuracy against training photos per class, one line per approach")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--runs", type=positive_int, default=3, help="how many split seeds (3)")
    parser.add_argument(
        "-S",
        "--set-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params.yaml value for every run, as in dvc exp run -S (repeatable)",
    )
    parser.add_argument(
        "--train-per-class",
        nargs="+",
        type=train_per_class,
        default=[],
        metavar="N",
        help="queue each seed once per number of training photos per class (split.train_per_class), e.g. "
        "30 100 300 1000 all: the points of imageclf curve",
    )


def run(args: argparse.Namespace) -> int:
    return repeat_command(args.runs, args.set_param, args.train_per_class)
