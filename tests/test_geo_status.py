"""A replicated tool's status (where it is active, lag, masters, health) and the exporter's
metrics of it, from states recorded on the geo lab (`tests/plan_cases/geo/`; pure)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from config.loader import load_site
from flows.plans.geo_state import GeoSnapshot
from flows.plans.geo_status import geo_status, status_markdown, status_rows
from infra.exporter import geo_families
from tasks.sensors import SensorReading

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent
SITE = load_site(ROOT.parent / "config" / "sites" / "geo-lab.yaml")
TOOL = SITE.geo.tool("portal") if SITE.geo else None


def recorded(name: str) -> GeoSnapshot:
    return GeoSnapshot.model_validate_json(
        (ROOT / "plan_cases" / "geo" / f"{name}.json").read_text()
    )


def samples(snap: GeoSnapshot) -> dict[tuple[str, tuple[str, ...]], float]:
    assert TOOL is not None
    reading = SensorReading(
        taken_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), duration_s=0, geo=[geo_status(TOOL, snap)]
    )
    out = {}
    for fam in geo_families(SITE, reading):
        for s in fam.samples:
            out[(s.name, tuple(s.labels[k] for k in sorted(s.labels) if k != "site"))] = s.value
    return out


def test_a_healthy_tool_has_nothing_wrong_and_its_table_says_where_it_is_active() -> None:
    assert TOOL is not None
    st = geo_status(TOOL, recorded("healthy"))
    assert st.ok, st.problems
    assert (st.active_site, st.epoch) == ("site-a", 1)
    rows = status_rows(st)
    assert [r[:2] for r in rows] == [["site-a", "active"], ["site-b", "standby"]]
    assert rows[0][2] == "writable, epoch 1" and rows[1][2].startswith("read-only")
    assert rows[1][3].endswith(": running") and rows[1][4] == "0 s / 0 tx"
    assert "- nothing wrong" in status_markdown([st])


def test_a_killed_site_and_a_stale_one_are_said_and_published() -> None:
    assert TOOL is not None
    killed = geo_status(TOOL, recorded("site-a-killed"))
    assert (
        killed.active_site == "site-b"
        or any("no DNS master" in p for p in killed.problems)
        or killed.problems
    )
    m = samples(recorded("site-a-killed"))
    assert m[("handover_geo_database_up", ("site-a", "portal"))] == 0.0
    assert m[("handover_replication_running", ("site-b", "portal"))] == 0.0
    stale = recorded("site-a-back-stale")
    st = geo_status(TOOL, stale)
    assert any("2 writable primaries" in p for p in st.problems)
    m = samples(stale)
    assert m[("handover_geo_active", ("site-b", "portal"))] == 1.0
    assert m[("handover_geo_active", ("site-a", "portal"))] == 0.0
    assert m[("handover_geo_epoch", ("portal",))] == 2.0
    assert m[("handover_geo_database_writable", ("site-a", "portal"))] == 1.0
    behind = {k[1]: v for k, v in m.items() if k[0] == "handover_geo_master_behind"}
    assert behind == {
        ("site-a", "127.0.0.1:55453", "portal"): 1.0,
        ("site-b", "127.0.0.1:55454", "portal"): 0.0,
    }


def test_a_site_without_geo_publishes_no_geo_metric() -> None:
    lab = load_site(ROOT.parent / "config" / "sites" / "lab.yaml")
    reading = SensorReading(taken_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), duration_s=0)
    assert geo_families(lab, reading) == []
