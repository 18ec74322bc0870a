"""The documentation's links hold: comments point at headings that exist, the docs link to files that exist,
and the README stays a short front page (docs/architecture.md#where-the-documentation-lives).

A reference is ``docs/<name>.md#<anchor>`` or ``README.md#<anchor>`` in a .py file, or a relative link
``[text](target)`` in README.md or docs/*.md. An anchor is GitHub's slug of a heading: lower case, spaces
to hyphens, punctuation dropped, ``-1``, ``-2`` ... after repeated headings.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE_FOLDERS = ("engine", "db", "app", "cli", "desktop", "benchmarks", "packaging", "tests")
README_MAX_LINES = 220
SETUP_COMMANDS = ("make run", "make test")

# docs/x.md or README.md, not preceded by a path (../shared/data/README.md is another project's file)
CODE_REFERENCE = re.compile(r"(?<![\w/.-])((?:docs/[\w.-]+\.md)|README\.md)(?:#([\w-]+))?")
# the old style: "see README 'Results'" or README "The environment profile", which no link checker can follow
UNLINKED_README = re.compile(r"README,? ['\"]")
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # punctuation, backticks, emphasis marks
    return text.replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    """Every heading anchor of a Markdown file (headings inside fenced code blocks are not headings)."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", markdown.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken(target: Path, anchor: str | None, root: Path) -> str | None:
    """Why a reference to ``target#anchor`` does not resolve (None when it does)."""
    if not target.exists():
        return f"{target.relative_to(root) if target.is_relative_to(root) else target} does not exist"
    if anchor and target.suffix == ".md" and anchor not in anchors(target):
        return f"{target.name} has no heading with the anchor #{anchor}"
    return None


def code_files(root: Path) -> list[Path]:
    """The .py files that may point at the docs (not this file: its examples are broken on purpose)."""
    files = [
        path
        for folder in CODE_FOLDERS
        for path in sorted((root / folder).rglob("*.py"))
        if path.resolve() != Path(__file__).resolve()
    ]
    if (root / "launcher.py").exists():
        files.append(root / "launcher.py")
    return files


def broken_code_references(root: Path) -> list[str]:
    """Every docs/README reference in the code that points at a missing file or heading."""
    problems = []
    for path in code_files(root):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for name, anchor in CODE_REFERENCE.findall(line):
                why = broken(root / name, anchor or None, root)
                if why:
                    problems.append(f"{path.relative_to(root)}:{number}: {name}#{anchor}: {why}")
    return problems


def unlinked_readme_references(root: Path) -> list[str]:
    """Comments in the old style (README 'Heading'): they cannot be followed, so they rot."""
    return [
        f"{path.relative_to(root)}:{number}: {line.strip()}"
        for path in code_files(root)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if UNLINKED_README.search(line)
    ]


def broken_document_links(root: Path) -> list[str]:
    """Every relative link of README.md and docs/*.md that points at a missing file or heading."""
    problems = []
    documents = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    for document in documents:
        if not document.exists():
            continue
        text = FENCE.sub("", document.read_text(encoding="utf-8"))
        for link in MARKDOWN_LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
                continue
            name, _, anchor = link.partition("#")
            target = (document.parent / name).resolve() if name else document
            why = broken(target, anchor or None, root.resolve())
            if why:
                problems.append(f"{document.relative_to(root)}: ({link}): {why}")
    return problems


# --- the repository ---------------------------------------------------------------------------------


def test_every_documentation_reference_in_the_code_resolves_to_a_heading():
    assert broken_code_references(REPO) == []


def test_no_comment_points_at_a_readme_heading_by_name():
    assert unlinked_readme_references(REPO) == []


def test_every_relative_link_in_the_readme_and_the_docs_resolves():
    assert broken_document_links(REPO) == []


def test_the_readme_is_a_short_front_page_with_the_two_setup_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES
    for command in SETUP_COMMANDS:
        assert command in readme


def test_the_docs_named_in_the_readme_exist():
    for name in ("architecture", "model", "results", "data-formats", "desktop", "cli"):
        assert (REPO / "docs" / f"{name}.md").is_file(), name


# --- the checker itself: it must be able to fail --------------------------------------------------


def _tree(tmp_path: Path, code: str, readme: str = "# Title\n") -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "model.md").write_text(
        "# Model\n\n## The linear mean feature\n\n```bash\n# not a heading\n```\n\n## Results\n\n## Results\n"
    )
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "prior.py").write_text(code)
    (tmp_path / "README.md").write_text(readme)
    return tmp_path


def test_slug_follows_github():
    assert slug("The environment profile") == "the-environment-profile"
    assert slug("Forecasting engine (`lsdm train`, `lsdm forecast`)") == "forecasting-engine-lsdm-train-lsdm-forecast"
    assert slug("Table III: the shipped model, 2026-11-30") == "table-iii-the-shipped-model-2026-11-30"
    assert slug("Long table ([format](x.md))") == "long-table-format"


def test_checker_accepts_a_reference_to_an_existing_heading(tmp_path):
    root = _tree(tmp_path, '"""Why (docs/model.md#the-linear-mean-feature, docs/model.md#results-1)."""\n')
    assert broken_code_references(root) == []


def test_checker_reports_a_missing_heading_a_missing_file_and_a_code_block_comment(tmp_path):
    root = _tree(tmp_path, "# docs/model.md#the-linear-mean\n# docs/models.md#x\n# docs/model.md#not-a-heading\n")
    problems = broken_code_references(root)
    assert len(problems) == 3
    assert "engine/prior.py:1" in problems[0] and "no heading" in problems[0]
    assert "does not exist" in problems[1]


def test_checker_reports_an_unlinked_readme_reference(tmp_path):
    root = _tree(tmp_path, "# measured (README \"Results\")\n# see README 'Data formats'\n# ../shared/data/README.md\n")
    assert len(unlinked_readme_references(root)) == 2
    assert broken_code_references(root) == []


def test_checker_reports_a_broken_link_in_a_document(tmp_path):
    root = _tree(
        tmp_path,
        "",
        readme="# T\n\n[model](docs/model.md#results) [gone](docs/gone.md) [here](#t) [x](#y)\n"
        "![shot](docs/screenshots/map.png) [web](https://example.org/a)\n",
    )
    problems = broken_document_links(root)
    assert [p.split(": (")[1].split(")")[0] for p in problems] == ["docs/gone.md", "#y", "docs/screenshots/map.png"]
