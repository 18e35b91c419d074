"""The `imageclf` command: use a trained model outside the pipeline, inspect models, run the study tools.

Each subcommand lives in its own module, which registers its arguments (`register(parser)`) and runs it
(`run(args) -> exit status`); this file only names them. Only the chosen command's module is imported, so
`imageclf predict` with an exported model, `imageclf regression` or `imageclf fetch` never waits for torch, timm and
torchvision to load.
"""

import argparse
import importlib
import re
import sys
from types import ModuleType

from imageclf.core.program import exit_without_final_collection, exits_cleanly

# name -> the module that implements it (its docstring's first line is the command's one-line help)
COMMANDS = {
    "predict": "imageclf.apps.predict",
    "export": "imageclf.apps.export",
    "serve": "imageclf.apps.serve",
    "summary": "imageclf.study.summary",
    "regression": "imageclf.study.regression",
    "fetch": "imageclf.data.fetch",
    "compare": "imageclf.study.compare",
    "repeat": "imageclf.study.repeat",
    "curve": "imageclf.study.curve",
    "lr-find": "imageclf.study.lr_find",
}


def one_line_help(module: ModuleType) -> str:
    """The module docstring's first phrase after its `imageclf NAME`: prefix (argparse's % escaped)."""
    text = " ".join((module.__doc__ or "").split())
    phrase = re.split(r"[:.] ", text.split(": ", 1)[-1], maxsplit=1)[0]
    return phrase.rstrip(".").replace("%", "%%")


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command listed; the modules of `chosen` (None: all, for the help) register their
    arguments."""
    parser = argparse.ArgumentParser(prog="imageclf", description="Use a model trained by the DVC pipeline.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if chosen is not None and name != chosen:
            commands.add_parser(name)
            continue
        module = importlib.import_module(module_name)
        first_paragraph = (module.__doc__ or "").strip().split("\n\n")[0]
        command = commands.add_parser(name, help=one_line_help(module), description=first_paragraph)
        module.register(command)
        command.set_defaults(run=module.run)
    return parser


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    """The `imageclf` program (`argv` None: the command line), or one command called from Python with `argv`."""
    if argv is None:
        exit_without_final_collection()
        argv = sys.argv[1:]
    chosen = next((argument for argument in argv if not argument.startswith("-")), None)
    args = build_parser(chosen if chosen in COMMANDS else None).parse_args(argv)
    raise SystemExit(args.run(args))
