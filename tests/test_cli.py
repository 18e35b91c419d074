"""The `imageclf` command's parser: every subcommand's help prints (argparse formats help strings with %)."""

import argparse

import pytest

from imageclf.cli import build_parser


def subcommands() -> list[str]:
    parser = build_parser()
    (choices,) = [action.choices for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return sorted(choices)


@pytest.mark.parametrize("command", [None, *subcommands()])
def test_every_help_prints(command: str | None, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args([command, "--help"] if command else ["--help"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith("usage: imageclf")
