"""Every relative link and image of README.md and docs/*.md resolves (issue 26).

A link ``[text](path)`` or image ``![alt](path)`` outside code is checked: the file or folder
``path`` exists, relative to the page, and where it carries ``#anchor`` into a Markdown page,
that page has a heading whose GitHub slug is ``anchor`` (lower case, punctuation other than
``-`` and ``_`` dropped, spaces to ``-``, a repeated heading's slug suffixed ``-1``, ``-2``, ...).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+).+?\1")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def prose(text: str) -> list[tuple[int, str]]:
    """The lines of a Markdown text outside fenced code, numbered from 1, code spans blanked."""
    found, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            found.append((number, CODE_SPAN.sub("", line)))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown page defines: its headings' slugs, and ``<a name=...>``."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        found.update(HTML_ANCHOR.findall(line))
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """``page:line: target (why)`` for each relative link of ``page`` that does not resolve,
    ``page`` named relative to ``root``."""
    text = page.read_text(encoding="utf-8")
    broken = []
    for number, line in prose(text):
        for target in LINK.findall(line):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, mailto:, ...
                continue
            path, _, anchor = target.partition("#")
            where = (page.parent / path).resolve() if path else page
            why = None
            if not where.exists():
                why = "no such file"
            elif anchor and where.suffix == ".md":
                own = text if where == page else where.read_text(encoding="utf-8")
                if anchor not in anchors(own):
                    why = f"no heading '#{anchor}' in {where.name}"
            if why:
                broken.append(f"{page.relative_to(root)}:{number}: {target} ({why})")
    return broken


def test_slugs_and_anchors_follow_github():
    text = (
        "# Serving over HTTP: `explain-serve` (Ray Serve)\n```\n# not a heading\n```\n"
        "## Several classes in one call: `--top-k K`\n## Notes\n## Notes\n"
        '<a name="kept"></a>\n### See [the docs](x.md) ##\n'
    )
    assert anchors(text) == {
        "serving-over-http-explain-serve-ray-serve",
        "several-classes-in-one-call---top-k-k",
        "notes",
        "notes-1",
        "kept",
        "see-the-docs",
    }


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "pic.png").write_bytes(b"")
    (tmp_path / "docs" / "other.md").write_text("# Other page\n## A part\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n[ok](other.md#a-part) ![ok](pic.png) [ok](#page) [web](https://x.org/y)\n"
        "`[in code](nowhere.md)`\n```\n[in a fence](nowhere.md)\n```\n"
        "[gone](missing.md) ![gone](../docs/nope.png)\n[bad anchor](other.md#b-part) [x](#none)\n"
    )
    assert broken_links(page, tmp_path) == [
        "docs/page.md:7: missing.md (no such file)",
        "docs/page.md:7: ../docs/nope.png (no such file)",
        "docs/page.md:8: other.md#b-part (no heading '#b-part' in other.md)",
        "docs/page.md:8: #none (no heading '#none' in page.md)",
    ]


def test_every_relative_link_of_the_readme_and_docs_resolves():
    assert len(PAGES) >= 10, [p.name for p in PAGES]
    broken = [line for page in PAGES for line in broken_links(page)]
    assert not broken, "broken links:\n" + "\n".join(broken)
