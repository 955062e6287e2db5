"""Every relative link in the README, docs/ and deployments/README.md names a file of the repository,
and a `#fragment` names a heading or an explicit anchor (`<a id="...">`) of the page it points to.

Links to the web (http, https, mailto) are not followed: the tests run offline.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO_ROOT / "README.md", REPO_ROOT / "deployments" / "README.md",
                *(REPO_ROOT / "docs").glob("*.md")])

_FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)[^`]*?\1")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.I)
_EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def _prose(text: str) -> str:
    """The page without fenced code blocks and code spans (brackets there are code, not links)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    text = page.read_text(encoding="utf-8")
    found: set[str] = set(_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


def links(page: Path) -> list[str]:
    return _LINK.findall(_prose(page.read_text(encoding="utf-8")))


def broken_links(page: Path, root: Path = REPO_ROOT) -> list[str]:
    """`target: problem` for every relative link of `page` that does not resolve inside `root`."""
    problems = []
    for target in links(page):
        if target.lower().startswith(_EXTERNAL):
            continue
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page.resolve()
        if not dest.is_relative_to(root.resolve()):
            problems.append(f"{target}: outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: no such file {dest.relative_to(root.resolve())}")
        elif fragment and dest.suffix == ".md" and unquote(fragment) not in anchors(dest):
            where = dest.relative_to(root.resolve())
            problems.append(f"{target}: no heading or anchor #{fragment} in {where}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_the_checker_finds_broken_links(tmp_path: Path) -> None:
    """The checker itself: a missing file, a missing heading or anchor and a path outside the root are
    reported; good links, links in code and web links are not."""
    (tmp_path / "other.md").write_text('# A heading: with `code`\n\n<a id="named"></a>\ntext\n')
    page = tmp_path / "page.md"
    page.write_text(
        "## Here\n"
        "[ok](other.md) [ok](other.md#a-heading-with-code) [ok](other.md#named) [ok](#here)\n"
        "[web](https://example.com/none.md) `[code](missing-in-code.md)`\n"
        "```\n[block](missing-in-block.md)\n```\n"
        "[gone](missing.md) [bad heading](other.md#nothing) [bad self](#nowhere) [up](../x.md)\n"
    )
    problems = broken_links(page, root=tmp_path)
    assert [p.split(":")[0] for p in problems] == ["missing.md", "other.md#nothing", "#nowhere", "../x.md"]


_DOC_MENTION = re.compile(r"(?<![\w/.-])docs/[\w-]+\.md")
SOURCE_DIRS = ("flows", "tasks", "stages", "models", "storage", "deployments", "tests")


def test_docs_pages_named_in_prose_and_code_exist() -> None:
    """A page named as a path (`docs/cache.md` in a sentence or a docstring) exists too."""
    files = [*PAGES, *(f for d in SOURCE_DIRS for f in sorted((REPO_ROOT / d).rglob("*.py")))]
    missing = sorted({f"{f.relative_to(REPO_ROOT)}: {name}" for f in files
                      for name in _DOC_MENTION.findall(f.read_text(encoding="utf-8"))
                      if not (REPO_ROOT / name).is_file()})
    assert missing == []


_SEED_NUMBER = re.compile(r"\bseeds?[ _-]?0\d\d\b|seeds/0\d\d", re.I)


@pytest.mark.parametrize("page", [p for p in PAGES if p.name != "references.md"],
                         ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_sources_are_cited_by_name(page: Path) -> None:
    """Papers and posts are cited by author, year and title (docs/references.md), not by the design
    card's "seed 00N" numbers; references.md alone keeps the old numbers, to translate them."""
    text = page.read_text(encoding="utf-8")
    assert [m.group(0) for m in _SEED_NUMBER.finditer(text)] == []


def test_every_page_is_checked() -> None:
    names = {str(p.relative_to(REPO_ROOT)) for p in PAGES}
    assert {"README.md", "docs/architecture.md", "docs/references.md", "deployments/README.md"} <= names
