"""The documentation: the generated reference pages match the code, every procedure has its
page, the README stays short, and nothing cites the design documents the repository's readers
do not have. (`make test` also builds the site with `mkdocs build --strict`.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from infra.docs import __main__ as docs
from infra.run import HOST_PROCEDURES
from tests.conftest import ROOT

pytestmark = pytest.mark.unit
DOCS = ROOT / "docs"


def test_the_generated_reference_pages_match_the_code() -> None:
    assert docs.stale() == [], "run `.venv/bin/python -m infra.docs` and commit the pages"


def test_a_page_that_differs_from_the_code_is_stale(tmp_path: Path) -> None:
    assert set(docs.write(tmp_path)) == set(docs.PAGES)  # all missing: all written
    assert docs.stale(tmp_path) == []
    page = tmp_path / "reference" / "site-file.md"
    page.write_text(page.read_text().replace("| `site` |", "| `place` |"))
    assert docs.stale(tmp_path) == ["reference/site-file.md"]
    assert docs.main(["--check"]) == 0  # the repository's own pages are current


def test_the_reference_shows_what_the_code_declares() -> None:
    cli = (DOCS / "reference" / "cli.md").read_text()
    assert "## `handover run`" in cli and "`drop-db-lock`" in cli
    site = (DOCS / "reference" / "site-file.md").read_text()
    assert "## ProcedurePolicy" in site and "| `drain_timeout_s` | float | `900.0` |" in site
    metrics = (DOCS / "reference" / "metrics.md").read_text()
    assert "| `handover_agent_serving` | `site`, `host`, `agent`, `channel`, `vo` |" in metrics
    alerts = (DOCS / "reference" / "alerts-and-events.md").read_text()
    assert "| `handover.alert.frontend_down` | an alert of kind `frontend_down`" in alerts
    assert "| `switch` |" in alerts  # what the switch's trigger expects, read from prefect.yaml


def _nav_pages(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in _nav_pages(item)]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in _nav_pages(value)]
    return []


def test_every_procedure_has_its_page_and_every_page_is_in_the_navigation() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = _nav_pages(config["nav"])
    procedures = {"clean-move", *HOST_PROCEDURES}  # every procedure `handover run` starts
    assert len(procedures) == 6
    missing = {p for p in procedures if f"procedures/{p}.md" not in pages}
    assert missing == set(), f"procedures without a page: {sorted(missing)}"
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert on_disk == set(pages), f"pages not in mkdocs.yml's nav: {on_disk - set(pages)}"


def test_the_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move details to docs/"


CITATION = re.compile(r"\b(seed|slide)s? \d+", re.IGNORECASE)


def test_no_page_or_product_file_cites_the_design_documents() -> None:
    files = [ROOT / "README.md", *DOCS.rglob("*.md")] + [
        f
        for top in ("config", "flows", "tasks", "infra", "deployments")
        for f in (ROOT / top).rglob("*")
        if f.is_file() and f.suffix in (".py", ".md", ".yaml", ".yml", ".sh", "")
    ]
    cited = [
        f"{f.relative_to(ROOT)}: {m.group(0)}"
        for f in files
        for m in CITATION.finditer(f.read_text(errors="replace"))
    ]
    assert cited == []


def test_every_field_of_the_site_file_says_what_it_is() -> None:
    """A field added to the site model without a description (or a ``#:`` comment) fails."""
    rows = [
        line
        for line in (DOCS / "reference" / "site-file.md").read_text().splitlines()
        if line.startswith("| `")
    ]
    assert len(rows) > 100
    assert [r for r in rows if r.rstrip().endswith("|  |")] == []
