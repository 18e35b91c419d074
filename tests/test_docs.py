"""Every relative link in README.md and docs/*.md leads somewhere: an existing file and, after `#`, a heading there;
docs/pipeline.md's code layout names every module of the package and the stages, and no other."""

import re
from pathlib import Path

import pytest

from tests.helpers import PROJECT

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = "```"


def prose_lines(path: Path) -> list[str]:
    """The lines outside code blocks (a `# comment` in a bash block is not a heading, nor a link)."""
    lines, in_code = [], False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith(FENCE):
            in_code = not in_code
        elif not in_code:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered -1, -2, ..."""
    found: set[str] = set()
    for line in prose_lines(path):
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            unique, count = slug, 0
            while unique in found:
                count += 1
                unique = f"{slug}-{count}"
            found.add(unique)
    return found


def documents() -> list[Path]:
    return [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]


def broken_links(path: Path) -> list[str]:
    broken = []
    for line in prose_lines(path):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # https:, mailto: and the like are not checked here
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{target}: no such file")
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                broken.append(f"{target}: no heading '#{anchor}' in {linked.name}")
    return broken


@pytest.mark.parametrize("path", documents(), ids=lambda path: path.relative_to(PROJECT).as_posix())
def test_every_relative_link_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = (PROJECT / "README.md").read_text()
    assert [page.name for page in documents()[1:] if f"](docs/{page.name}" not in readme] == []


def code_layout_section() -> str:
    """The text of docs/pipeline.md's "Code layout" section, up to the next heading of its level."""
    text = (PROJECT / "docs/pipeline.md").read_text()
    section = text.split("\n## Code layout\n", 1)[1]
    return section.split("\n## ", 1)[0]


def modules() -> set[str]:
    """Every Python module of the package and the stages, but the empty `__init__.py` files of the layer folders."""
    files = [*(PROJECT / "imageclf").rglob("*.py"), *(PROJECT / "stages").glob("*.py")]
    return {
        path.relative_to(PROJECT).as_posix()
        for path in files
        if "__pycache__" not in path.parts and not (path.name == "__init__.py" and not path.read_text().strip())
    }


def test_the_code_layout_names_every_module_and_no_other() -> None:
    named = set(re.findall(r"`((?:imageclf|stages)/[\w/]+\.py)`", code_layout_section()))
    assert sorted(modules() - named) == [], "modules docs/pipeline.md's Code layout does not name"
    assert sorted(named - modules()) == [], "modules docs/pipeline.md's Code layout names that do not exist"
