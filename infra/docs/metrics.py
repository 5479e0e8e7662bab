"""The metrics' reference page, from the exporter's own metric families (`infra.exporter`).

The exporter builds its families from a reading of the sensors and from the Prefect API's run
counts; this page asks it for the families of an empty reading, so each metric's name, help
text and labels are exactly what `/metrics` serves.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from config.loader import load_site
from infra.exporter import api_family, families, geo_families, run_families
from tasks.run_counts import RunCounts
from tasks.sensors import SensorReading

#: the sites the families are built for (labels and help texts do not depend on them): the
#: FTS lab, and the geo lab for the replicated tools' families
SITE_FILE = Path(__file__).resolve().parents[2] / "config" / "sites" / "lab.yaml"
GEO_SITE_FILE = SITE_FILE.with_name("geo-lab.yaml")


def page() -> str:
    """The metrics' reference, as markdown."""
    site = load_site(SITE_FILE)
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    reading = SensorReading(taken_at=at, duration_s=0.0)
    metrics = [
        *families(site, reading, {}, at.timestamp()),
        *run_families(site, RunCounts(window_s=3600)),
        api_family(site, True),
        *geo_families(load_site(GEO_SITE_FILE), reading),
    ]
    out = [
        "# Metrics",
        "",
        "Generated from the exporter (`infra/exporter.py`) by `python -m infra.docs`: what "
        "`handover exporter` serves on `/metrics`, every metric a gauge. `handover_runs` and "
        "`handover_approvals_waiting` come from the Prefect API; the others from the last "
        "reading of the site's sensors (SSH snapshots of the hosts and the front ends' status; for "
        "a site with replicated tools, `handover_geo_*` and `handover_replication_*` from each "
        "tool's databases, DNS masters and health pages).",
        "",
        "| metric | labels | what it says |",
        "|---|---|---|",
    ]
    for m in metrics:
        labels = ", ".join(f"`{label}`" for label in m._labelnames)
        what = m.documentation.replace("|", "\\|")
        out.append(f"| `{m.name}` | {labels} | {what} |")
    return "\n".join(out) + "\n"
