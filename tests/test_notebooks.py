"""Every chapter follows the book's notebook conventions (static checks; nbval executes them)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))
FENCED_PYTHON = re.compile(r"```python\n(.*?)\n```", re.S)


def cells(path):
    return json.loads(path.read_text())["cells"]


def source(cell):
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks in chapters/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_skeleton(path):
    nb = cells(path)
    assert nb[0]["cell_type"] == "markdown" and source(nb[0]).startswith("# ")
    tags = [set(c.get("metadata", {}).get("tags", [])) for c in nb]
    assert sum("parameters" in t for t in tags) == 1, "exactly one cell tagged 'parameters'"
    checks = [source(c) for c, t in zip(nb, tags) if "remove-cell" in t and "solution" not in t]
    assert any("assert" in s for s in checks), "a hidden check cell with asserts"
    code = [c for c in nb if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "outputs committed"
    assert "import genlib" in source(code[0])
    assert path.stem in (ROOT / "_toc.yml").read_text(), "chapter missing from _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_solutions_shown_are_solutions_run(path):
    nb = cells(path)
    markdown = "\n".join(source(c) for c in nb if c["cell_type"] == "markdown")
    n_exercises = len(re.findall(r"[`:]{3,}\{exercise\}", markdown))
    assert n_exercises >= 3, f"{n_exercises} exercises"
    solutions = 0
    for i, cell in enumerate(nb):
        if "solution" not in cell.get("metadata", {}).get("tags", []):
            continue
        solutions += 1
        shown = [c for c in nb[:i] if c["cell_type"] == "markdown" and "{solution}" in source(c)]
        assert shown, f"cell {i}: a solution code cell with no {{solution}} directive before it"
        blocks = FENCED_PYTHON.findall(source(shown[-1]))
        assert blocks and blocks[-1].strip() == source(cell).strip(), f"cell {i}: shown and run code differ"
    assert solutions >= n_exercises, f"{n_exercises} exercises but {solutions} executed solutions"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_lists_its_references(path):
    # Each page's bibliography shows only what that page cites; a chapter without one makes
    # its citations unresolvable (sphinxcontrib-bibtex: "could not find bibtex key").
    markdown = "\n".join(source(c) for c in cells(path) if c["cell_type"] == "markdown")
    assert "{cite}" in markdown, "the chapter cites nothing"
    assert re.search(r"```\{bibliography\}\n:filter: docname in docnames\n```", markdown), \
        "no {bibliography} with ':filter: docname in docnames' (put it under '## References')"


def test_book_build_keeps_the_inline_backend():
    # With MPLBACKEND=Agg the executed chapters produce no image outputs: the book has no figures.
    script = (ROOT / "book" / "build.sh").read_text()
    assert "MPLBACKEND=" not in script and "unset MPLBACKEND" in script


def directives_with_inner_fences(markdown):
    """(opening fence, directive) pairs whose body contains a fence at least as long as the opening one.

    MyST closes a directive at the first fence of its own length or longer: an inner ```python
    inside a ```{solution} ends the directive early and leaves an empty code block behind.
    """
    bad = []
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(`{3,}|:{3,})\{(\w[\w-]*)\}", line)
        if not m:
            continue
        fence, depth = m.group(1), len(m.group(1))
        for inner in lines[i + 1:]:
            im = re.match(r"^(`{3,}|:{3,})(.*)$", inner)
            if not im or im.group(1)[0] != fence[0]:
                continue
            if im.group(2).strip() == "" and len(im.group(1)) >= depth:
                break  # the directive's own closing fence
            if len(im.group(1)) >= depth:
                bad.append((fence, m.group(2)))
                break
    return bad


def test_fence_check_finds_a_nested_fence():
    good = "````{solution} ex\n```python\nx = 1\n```\n````"
    bad = "```{solution} ex\n```python\nx = 1\n```\n```"
    assert directives_with_inner_fences(good) == []
    assert directives_with_inner_fences(bad) == [("```", "solution")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_directives_containing_fences_open_with_longer_fences(path):
    for cell in cells(path):
        if cell["cell_type"] == "markdown":
            assert not directives_with_inner_fences(source(cell)), source(cell)[:300]


PRINTED_TABLE = re.compile(r"print\((results\.table\(|f?[\"']\|)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tables_are_displayed_not_printed(path):
    # A printed Markdown table shows as raw pipes on the page; results.table / results.markdown_table
    # return text that Jupyter and the book render as a table.
    for cell in cells(path):
        if cell["cell_type"] == "code":
            assert not PRINTED_TABLE.search(source(cell)), source(cell)[:300]
