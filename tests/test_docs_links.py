"""The documents are self-contained: every link of README.md, deploy/README.md and docs/ points at
a file of the repository (or a web page), never outside it; the architecture document covers what
a newcomer needs."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "deploy/README.md", *sorted(str(path.relative_to(REPO)) for path in REPO.glob("docs/*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"^```.*?^```|`[^`\n]*`", re.MULTILINE | re.DOTALL)


def links(document: str) -> list[str]:
    text = CODE.sub("", (REPO / document).read_text())
    return LINK.findall(text)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_link_stays_inside_the_repository(document: str) -> None:
    outside, missing = [], []
    for link in links(document):
        if link.startswith(("https://", "http://", "mailto:", "#")):
            continue
        target = (REPO / document).parent / link.split("#", 1)[0]
        if not target.resolve().is_relative_to(REPO):
            outside.append(link)
        elif not target.exists():
            missing.append(link)
    assert outside == [], f"{document} links outside the repository"
    assert missing == [], f"{document} links to files that do not exist"


def test_the_readme_links_the_design_documents_in_the_repository() -> None:
    readme_links = links("README.md")
    assert {"docs/ARCHITECTURE.md", "docs/PERFORMANCE.md", "docs/RELIABILITY.md"} <= set(readme_links)
    assert not [link for link in readme_links if link.startswith(("../", "/"))]


def test_the_architecture_document_covers_the_platform_and_the_recipes() -> None:
    text = (REPO / "docs/ARCHITECTURE.md").read_text()
    headings = set(re.findall(r"^## (.+)$", text, re.MULTILINE))
    assert {"Services", "The kernel (`shared/`)", "Identity", "Events", "Run modes", "Recipes"} <= headings
    recipes = text.split("## Recipes", 1)[1]
    for recipe in ("**A route.**", "**A setting.**", "**A migration.**", "**A service.**"):
        assert recipe in recipes
