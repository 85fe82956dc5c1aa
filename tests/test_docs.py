"""The docs stay findable: each page opens with the one question it answers, the prose stays
short enough to read, and every relative link in README.md and docs/ points at a file that exists."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
# Written by launch/report.py and launch/studies/compare_tables.py from a preamble (checked as its own page).
GENERATED = {"results.md": "results_preamble.md", "compression.md": "compression_preamble.md"}
MAX_PROSE_LINES = 2500
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def written_pages() -> list[Path]:
    return sorted(path for path in DOCS.glob("*.md") if path.name not in GENERATED)


def prose_lines(path: Path) -> int:
    """Lines that are not table rows (tables are data, counted by neither the reader nor this budget)."""
    return sum(1 for line in path.read_text().splitlines() if not line.lstrip().startswith("|"))


def test_prose_lines_count_everything_but_table_rows(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\ntext\n| a | b |\n|---|---|\n  | 1 | 2 |\n- item\n")
    assert prose_lines(page) == 4


@pytest.mark.parametrize("page", written_pages(), ids=lambda path: path.name)
def test_each_page_opens_with_its_question(page):
    lines = page.read_text().splitlines()
    assert lines[0].startswith("# "), f"{page.name}: the first line is not a title"
    opening = " ".join(lines[1:6])
    assert re.search(r"^\s*\*\*[^*]+\?\*\*", opening), f"{page.name}: its first paragraph is not a bold question (**...?**)"


def test_docs_prose_fits_the_budget():
    total = sum(prose_lines(page) for page in written_pages())
    assert total <= MAX_PROSE_LINES, f"docs/ holds {total} lines of prose (at most {MAX_PROSE_LINES})"


@pytest.mark.parametrize("page", [REPO / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda path: path.name)
def test_relative_links_resolve(page):
    missing = [
        target
        for target in LINK.findall(page.read_text())
        if "://" not in target and not target.startswith("mailto:") and not (page.parent / target).exists()
    ]
    assert not missing, f"{page.relative_to(REPO)} links to missing files: {missing}"


def test_pages_named_in_prose_exist():
    """'docs/NAME.md' written out (not as a link) in the README, the docs and the code names a page that exists."""
    mentioned = set()
    for path in [REPO / "README.md", *DOCS.glob("*.md"), *(REPO / "rec_kd").rglob("*.py"), *(REPO / "launch").rglob("*.py")]:
        mentioned |= {(path.name, name) for name in re.findall(r"docs/([\w-]+\.md)", path.read_text())}
    missing = sorted((where, name) for where, name in mentioned if not (DOCS / name).exists())
    assert not missing, f"pages named but missing: {missing}"
