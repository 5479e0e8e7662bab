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
    assert len(procedures) == 8
    # the failback is the geo failover's way back: one page tells both
    page = {"geo-failback": "geo-failover"}
    missing = {p for p in procedures if f"procedures/{page.get(p, p)}.md" not in pages}
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


def _record(tmp_path: Path, bench: str, result: dict[str, object]) -> None:
    import datetime as dt

    from infra.bench.record import Machine, Record

    rec = Record(
        bench=bench,
        command=f"handover bench {bench} --record",
        date=dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.UTC),
        commit="0123456789ab",
        machine=Machine(
            cpus=2,
            cpu_model="Xeon",
            memory_gib=24.0,
            kernel="6.1",
            os="Debian GNU/Linux 12 (bookworm)",
            python="3.11.7",
            prefect="3.9.1",
        ),
        result=result,
    )
    (tmp_path / f"{bench}.json").write_text(rec.model_dump_json())


def _round(total: float, offsets: dict[str, tuple[float, float]]) -> dict[str, object]:
    return {
        "downtime_sum_s": total,
        "channels": {
            ch: {"inactive_after_start_s": start, "downtime_s": down, "limit_s": down * 0.9}
            for ch, (start, down) in offsets.items()
        },
    }


def test_the_benchmarks_page_renders_each_record_with_its_commit_machine_and_verdict(
    tmp_path: Path,
) -> None:
    from infra.docs import benchmarks

    _record(tmp_path, "lab", {"ok": True, "summary": ["up 12.00 s (target 30 s, ratio 0.40)"]})
    runs = {
        "full": [
            _round(30.0, {"A-B": (0.1, 15.0), "C-D": (0.1, 15.0)}),
            _round(40.0, {"A-B": (0.1, 20.0), "C-D": (0.1, 20.0)}),
            _round(35.0, {"A-B": (0.1, 17.0), "C-D": (0.1, 18.0)}),
        ],
        "pipelined": [_round(4.0, {"A-B": (2.0, 2.0), "C-D": (0.5, 2.0)})],
    }
    _record(tmp_path, "clean-move", {"ok": False, "summary": ["ratio 0.11"], "runs": runs})
    page = benchmarks.page(tmp_path)
    assert "| [lab](#lab) | lab up/down time (medians) and memory | 2026-12-07 |" in page
    assert "`0123456789ab` | met |" in page and "| **missed** |" in page
    assert "up 12.00 s (target 30 s, ratio 0.40)" in page
    assert "2 CPUs (Xeon), 24 GiB, Debian GNU/Linux 12 (bookworm)" in page
    assert "`handover bench switch --record`" in page  # not recorded yet: says how
    assert f"]({benchmarks.TIMELINE})" in page
    # the median round of each variant: full's is the 35 s one
    rows = benchmarks.timeline_rows(benchmarks.load_records(tmp_path)[0])
    assert [(v, c, d) for v, c, _, d, _ in rows] == [
        ("full", "A-B", 17.0),
        ("full", "C-D", 18.0),
        ("pipelined", "A-B", 2.0),
        ("pipelined", "C-D", 2.0),
    ]
    svg = benchmarks.timeline_svg(tmp_path)
    assert svg.count("<rect ") == 4 and "C-D: 18.00 s down from 0.10 s" in svg


def test_a_bench_record_that_is_not_one_is_named(tmp_path: Path) -> None:
    from infra.bench.record import load_records

    (tmp_path / "lab.json").write_text('{"bench": "lab"}')
    with pytest.raises(ValueError, match=r"lab\.json: not a bench record"):
        load_records(tmp_path)
