"""`imageclf repeat`: queue one configuration over several split seeds (dvc exp run --queue).

Then `imageclf compare` can tell its spread; start them with `dvc queue start`."""

import argparse
from pathlib import Path

from imageclf.core.arguments import positive_int
from imageclf.core.errors import UserError
from imageclf.study.compare import dvc


def repeat_seeds(runs: int) -> list[int]:
    """The split seeds of `runs` repeats: the shipped 42, then 1, 2, … (the splits docs/results.md reports)."""
    return [42, *range(1, runs)]


def repeat_command(runs: int, settings: list[str]) -> int:
    """Queue one configuration (`settings`, params.yaml key=value) over `runs` split seeds; print what to run next."""
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals or not key or not value:
            raise UserError(f"-S {setting}: give a params.yaml key=value, such as -S train.lr=0.003")
        if key == "split.seed":
            raise UserError("-S split.seed: repeat sets the split seed itself; give the other params")
    for seed in repeat_seeds(runs):
        options = [item for setting in settings for item in ("-S", setting)]
        dvc(["exp", "run", "--queue", "-S", f"split.seed={seed}", *options], Path.cwd())
    configuration = " ".join(settings) or "params.yaml as it is"
    seeds = ", ".join(map(str, repeat_seeds(runs)))
    print(f"queued {runs} runs of {configuration} (split.seed {seeds}); next:")
    print("  dvc queue start        # run them in the background (or: dvc exp run --run-all, in the foreground)")
    print("  dvc queue status       # which are queued, running, done or failed")
    print("  dvc exp show           # their params and metrics")
    print("  imageclf compare       # each configuration's mean, spread, 95 % interval and paired tests")
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


def run(args: argparse.Namespace) -> int:
    return repeat_command(args.runs, args.set_param)
