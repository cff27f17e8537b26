"""The README and docs/ are the front door and the manual: every relative link in them
must lead to a file that exists and, with a `#fragment`, to an anchor GitHub renders
there (a heading's slug or an explicit `<a id>`)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCUMENTS = [
    README,
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "deploy" / "kubernetes" / "README.md",
]
README_MAX_LINES = 300

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
_INLINE_CODE = re.compile(r"`[^`]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, where links and headings are rendered."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose_lines(text):
        found.update(_EXPLICIT_ANCHOR.findall(line))
        heading = _HEADING.match(line)
        if heading:
            base = slug(heading[2])
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> list[str]:
    """Relative link targets (`path`, `path#anchor`, `#anchor`), code spans left out."""
    targets = []
    for line in _prose_lines(text):
        for target in _LINK.findall(_INLINE_CODE.sub("", line)):
            if not _EXTERNAL.match(target):
                targets.append(target)
    return targets


def broken_links(document: Path) -> list[str]:
    problems = []
    for target in links(document.read_text(encoding="utf-8")):
        path, _, fragment = target.partition("#")
        destination = (document.parent / path).resolve() if path else document
        if not destination.exists():
            problems.append(f"{target}: no such file")
        elif fragment:
            if destination.suffix != ".md":
                problems.append(f"{target}: an anchor in a file that is not Markdown")
            elif fragment not in anchors(destination.read_text(encoding="utf-8")):
                problems.append(f"{target}: no anchor #{fragment} in {destination.name}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(document: Path) -> None:
    assert document.exists(), f"{document.relative_to(REPO)} is missing"
    assert links(document.read_text(encoding="utf-8")), "expected links into the other docs"
    assert broken_links(document) == []


def test_the_readme_stays_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_the_readme_links_every_document_in_docs() -> None:
    linked = {target.partition("#")[0] for target in links(README.read_text(encoding="utf-8"))}
    for document in (REPO / "docs").glob("*.md"):
        assert f"docs/{document.name}" in linked, f"README.md does not link {document.name}"


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Issue 10 refactor: before/after", "issue-10-refactor-beforeafter"),
        ("What happens on a 429?", "what-happens-on-a-429"),
        ("`FORWARDER_DLQ_TOPIC` and dead letters", "forwarder_dlq_topic-and-dead-letters"),
        ("Kafka with SASL or TLS", "kafka-with-sasl-or-tls"),
        ("Latency \u2013 p99", "latency--p99"),  # an en dash is dropped, its spaces stay
        ("See [Operations](docs/operations.md)", "see-operations"),
    ],
)
def test_slug_matches_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_the_checker_reports_missing_files_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text('# Title\n\n<a id="kept"></a>\n## Twice\n## Twice\n')
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n"
        "[ok](other.md#title) [ok](other.md#kept) [ok](other.md#twice-1) [ok](#page)\n"
        "[gone](missing.md) [no anchor](other.md#nope) [self](#nope-here)\n"
        "`[in code](missing-in-code.md)` [web](https://example.com/x.md)\n"
        "```\n[in a fence](missing-in-fence.md)\n```\n"
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#nope: no anchor #nope in other.md",
        "#nope-here: no anchor #nope-here in page.md",
    ]
