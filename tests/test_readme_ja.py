"""README.ja.md, the study group's Japanese README, names the commands the English README and docs name."""

import re
from pathlib import Path

from tests.test_docs import broken_links

ROOT = Path(__file__).parent.parent
CODE_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def commands(markdown: str) -> set[str]:
    """The `imageclf …` and `dvc …` commands in the code blocks of `markdown`, without comments, spaces collapsed;
    a line may chain several with `&&`."""
    found = set()
    for block in CODE_BLOCK.findall(markdown):
        for line in block.splitlines():
            for part in line.split(" #", 1)[0].split("&&"):
                command = " ".join(part.split())
                if command.startswith(("imageclf ", "dvc ")):
                    found.add(command)
    return found


def english_docs() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))])


def test_commands_are_read_from_code_blocks_only_after_and_and_without_comments() -> None:
    markdown = (
        "Run `dvc push` inline.\n\n```bash\npip install x && dvc repro   # all stages\n"
        "imageclf predict  a.jpg    # predict\nls\n```\n"
    )
    assert commands(markdown) == {"dvc repro", "imageclf predict a.jpg"}


def test_the_japanese_readme_names_every_command_of_the_readme_and_none_the_english_docs_lack() -> None:
    japanese = commands((ROOT / "README.ja.md").read_text(encoding="utf-8"))
    readme = commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert readme - japanese == set(), "commands of README.md missing from README.ja.md"
    assert japanese - commands(english_docs()) == set(), "commands only README.ja.md names: add them to the docs"
    assert {
        "imageclf serve",
        "imageclf fetch animals10 --kaggle",
        "imageclf summary --model original --mode fromzero",
    } <= japanese


def test_both_readmes_link_each_other_at_the_top_and_every_link_resolves() -> None:
    assert "(README.ja.md)" in (ROOT / "README.md").read_text(encoding="utf-8").split("\n\n", 2)[1]
    assert "(README.md)" in (ROOT / "README.ja.md").read_text(encoding="utf-8").split("\n\n", 2)[1]
    assert broken_links(ROOT / "README.ja.md") == []
