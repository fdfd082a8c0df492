"""The project's Markdown documents: every relative link resolves, README's Python compiles.

Checked: ``README.md``, ``benchmarks/README.md``, ``notebooks/README.md`` and ``docs/*.md``
(each where present). A relative link (``[text](path)``, ``![alt](path)``, ``<img src=...>``)
must name an existing file or directory, relative to the document; an anchor (``#papers``,
``other.md#section``) must be a heading of the document it points into (GitHub's slugs).
Links inside fenced code blocks and absolute URLs are not checked. Every ```` ```python ````
block of README.md must at least compile (nothing is run).
"""

from __future__ import annotations

from pathlib import Path
import re

import pytest


ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted(
    path
    for path in [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]
    + [ROOT / "notebooks" / "README.md"]
    + list((ROOT / "docs").glob("*.md"))
    if path.is_file()
)

# Links known to be broken on main, kept visible as strict xfails until the document is fixed
# (README.md is the integrator's to edit). When a link here is fixed, the strict xfail of its
# test has nothing to fail on and test_known_broken_links_are_still_there tells to remove it.
KNOWN_BROKEN: dict[tuple[str, str], str] = {}

_FENCE = re.compile(r"^\s*(```|~~~)")
_MARKDOWN_LINK = re.compile(
    r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)"
)
_HTML_LINK = re.compile(r"""<(?:img|a)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.I)
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1, inline code removed."""
    lines = []
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, re.sub(r"`[^`]*`", "", line)))
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    slugs: set[str] = set()
    counts: dict[str, int] = {}
    for _, line in _prose_lines(path):
        match = _HEADING.match(line)
        if match:
            slug = _slug(match.group(2))
            n = counts.get(slug, 0)
            counts[slug] = n + 1
            slugs.add(slug if n == 0 else f"{slug}-{n}")
    return slugs


def _links(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in _prose_lines(path):
        targets = _MARKDOWN_LINK.findall(line) + _HTML_LINK.findall(line)
        reference = _REFERENCE.match(line)
        if reference:
            targets.append(reference.group(1))
        found += [(number, target) for target in targets]
    return found


def _is_external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)) or target.startswith("//")


def _relative_links() -> list[tuple[Path, int, str]]:
    return [
        (doc, number, target)
        for doc in DOCUMENTS
        for number, target in _links(doc)
        if not _is_external(target)
    ]


def _params() -> list[object]:
    params: list[object] = []
    for doc, number, target in _relative_links():
        name = doc.relative_to(ROOT).as_posix()
        reason = KNOWN_BROKEN.get((name, target))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(doc, target, id=f"{name}:{number}:{target}", marks=marks))
    return params


def test_the_documents_are_found() -> None:
    assert ROOT / "README.md" in DOCUMENTS
    assert any(target == "#papers" for _, target in _links(ROOT / "README.md"))


@pytest.mark.parametrize("doc, target", _params())
def test_relative_link_resolves(doc: Path, target: str) -> None:
    file_part, _, anchor = target.partition("#")
    linked = (doc.parent / file_part).resolve() if file_part else doc
    where = doc.relative_to(ROOT).as_posix()
    assert linked.exists(), (
        f"{where} links {target!r}, but {linked.relative_to(ROOT)} does not exist: fix the link "
        "(or add the file)."
    )
    if anchor and linked.suffix == ".md":
        assert anchor in _anchors(linked), (
            f"{where} links {target!r}, but {linked.relative_to(ROOT)} has no heading with the "
            f"anchor #{anchor} (its anchors: {sorted(_anchors(linked))})."
        )


def test_known_broken_links_are_still_there() -> None:
    present = {(d.relative_to(ROOT).as_posix(), t) for d, _, t in _relative_links()}
    fixed = [key for key in KNOWN_BROKEN if key not in present]
    assert not fixed, f"Fixed, so remove them from KNOWN_BROKEN in {__file__}: {fixed}"


def _python_blocks(path: Path) -> list[tuple[int, str]]:
    blocks = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if re.match(r"^\s*```\s*python\s*$", lines[i]):
            start = i + 1
            i += 1
            while i < len(lines) and not _FENCE.match(lines[i]):
                i += 1
            indent = len(lines[start - 1]) - len(lines[start - 1].lstrip())
            body = [line[indent:] if line[:indent].isspace() else line for line in lines[start:i]]
            blocks.append((start + 1, "\n".join(body) + "\n"))
        i += 1
    return blocks


def test_readme_python_blocks_compile() -> None:
    blocks = _python_blocks(ROOT / "README.md")
    assert blocks, "README.md has no ```python block"
    for line, source in blocks:
        # A SyntaxError here names README.md and the line of the block.
        compile(source, f"README.md (block at line {line})", "exec")
