"""The monitoring side shipped in infra/monitoring/: Prometheus' rules checked and unit-tested by
`promtool`, its configuration (the exporter's bearer token from a file) checked by `promtool`,
Alertmanager's configuration checked by `amtool`, and both tied to the product: every
metric a rule uses is one the exporter publishes, and every alert routed to the gateway becomes
the alert kind its rule says."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.loader import load_site
from config.site import AlertmanagerIntake
from infra.gateway.alerts import parse_alertmanager
from tests.conftest import ROOT, require

MON = ROOT / "infra" / "monitoring"
SITE = load_site(ROOT / "config" / "sites" / "lab.yaml")
GEO_SITE = load_site(ROOT / "config" / "sites" / "geo-lab.yaml")


def tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which(name)
    require(
        path is not None, f"{name} (Debian packages prometheus prometheus-alertmanager)", need="lab"
    )
    assert path is not None
    return subprocess.run(
        [path, *args], cwd=MON, capture_output=True, text=True, timeout=120, check=False
    )


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((MON / "handover-rules.yml").read_text())
    return [r for g in data["groups"] for r in g["rules"]]


@pytest.mark.monitoring
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    res = tool("promtool", "check", "rules", "handover-rules.yml")
    assert res.returncode == 0 and "SUCCESS: 20 rules found" in res.stdout, res.stdout + res.stderr
    res = tool("promtool", "test", "rules", "tests.yml")
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr
    # every rule has a unit test
    tested = set(re.findall(r"alertname: (\w+)", (MON / "tests.yml").read_text()))
    assert tested == {r["alert"] for r in rules()}


@pytest.mark.monitoring
def test_amtool_checks_the_alertmanager_configuration() -> None:
    res = tool("amtool", "check-config", "alertmanager.yml")
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr
    cfg = yaml.safe_load((MON / "alertmanager.yml").read_text())
    [to_gateway] = cfg["route"]["routes"]
    assert to_gateway["receiver"] == "handover" and to_gateway["matchers"] == [
        'handover_kind=~".+"'
    ]
    [hook] = next(r for r in cfg["receivers"] if r["name"] == "handover")["webhook_configs"]
    assert hook["url"].endswith("/alerts/alertmanager") and hook["send_resolved"] is True


@pytest.mark.monitoring
def test_promtool_checks_the_prometheus_configuration_and_its_bearer_token(
    tmp_path: Path,
) -> None:
    """The shipped scrape job sends the exporter's token from a file; promtool checks the
    configuration with its rules (and that the token file exists: here a copy points at one)."""
    res = tool("promtool", "check", "config", "--syntax-only", "prometheus.yml")
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr
    cfg = yaml.safe_load((MON / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    # the exporter's sensors, and handover's own parts (the rules page when one is gone)
    assert set(jobs) == {"handover", "handover-gateway", "handover-balancer"}
    job = jobs["handover"]
    assert job["authorization"]["type"] == "Bearer"
    assert Path(job["authorization"]["credentials_file"]).is_absolute()
    assert cfg["rule_files"] == ["handover-rules.yml"]
    token = tmp_path / "exporter.token"
    token.write_text("a-token-for-promtool-0123456789\n")
    job["authorization"]["credentials_file"] = str(token)
    cfg["rule_files"] = [str(MON / "handover-rules.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    res = tool("promtool", "check", "config", str(tmp_path / "prometheus.yml"))
    assert res.returncode == 0 and "SUCCESS: 20 rules found" in res.stdout, res.stdout + res.stderr


def test_every_metric_the_rules_use_is_one_the_exporter_publishes() -> None:
    from flows.plans.snapshot import HostSnapshot, SiteSnapshot
    from flows.plans.switch import FrontendState
    from infra.exporter import api_family, families, geo_families, run_families
    from tasks.run_counts import RunCounts
    from tasks.sensors import SensorReading

    t = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
    reading = SensorReading(
        taken_at=t,
        duration_s=1.0,
        snapshot=SiteSnapshot(
            site="lab", taken_at=t, hosts=[HostSnapshot(host="fts101", reachable=True, taken_at=t)]
        ),
        frontends=[FrontendState(host="fts101", reachable=True, epoch=1, db_epoch=1)],
    )
    published = {f.name for f in families(SITE, reading, {"CERN-CERN": 0.0}, t.timestamp())}
    counts = RunCounts(window_s=60, workers={"handover": 1})
    published |= {f.name for f in run_families(SITE, counts)}
    published.add(api_family(SITE, True).name)
    # the replicated tools' metrics (a site with `geo:`)
    geo = load_site(ROOT / "config" / "sites" / "geo-lab.yaml")
    published |= {f.name for f in geo_families(geo, reading)}
    used = {m for r in rules() for m in re.findall(r"\bhandover_[a-z_]+", r["expr"])}
    assert used and used <= published, used - published
    # the other metrics are the balancer's (HAProxy's exporter) and Prometheus' own `up`
    others = {
        m for r in rules() for m in re.findall(r"\b([a-z_]+)\s*(?:\{|==|<)", r["expr"])
    } - used
    assert others <= {"haproxy_server_status", "haproxy_backend_active_servers", "up"}, others


def test_the_alerts_routed_to_the_gateway_start_the_kind_their_rule_says() -> None:
    for r in rules():
        # a lost geo site's alert names the geo site, the others a host (and an exporter)
        geo = r["labels"].get("handover_kind") == "site_down"
        site = GEO_SITE if geo else SITE
        assert site.alerts is not None and site.alerts.alertmanager is not None
        intake: AlertmanagerIntake = site.alerts.alertmanager
        about = {"geo_site": "site-a", "tool": "portal"} if geo else {"host": "fts101"}
        labels = {
            "alertname": r["alert"],
            "site": site.site,
            "instance": "127.0.0.1:9464",
            **about,
            **r["labels"],
        }
        body = json.dumps(
            {
                "version": "4",
                "status": "firing",
                "alerts": [
                    {
                        "status": "firing",
                        "labels": labels,
                        "annotations": {"summary": "s"},
                        "startsAt": dt.datetime.now(dt.UTC).isoformat(),
                    }
                ],
            }
        ).encode()
        alerts, refused = parse_alertmanager(site, intake, body)
        if "handover_kind" in r["labels"]:
            assert not refused and [a.kind for a in alerts] == [r["labels"]["handover_kind"]]
            assert site.alerts.procedures.get(alerts[0].kind) is not None, r["alert"]
            if geo:
                assert (alerts[0].geo_site, alerts[0].host) == ("site-a", "")
        else:
            # not routed to the gateway (alertmanager.yml), and refused if it were
            assert alerts == [] and refused, r["alert"]


@pytest.mark.monitoring
def test_the_rules_take_the_sites_for_and_refuse_an_unknown_alert(tmp_path: Path) -> None:
    from config.site import Alerts, SecretRef
    from infra.rules import RulesError, prometheus_duration, site_rules

    def fors(site: Any) -> dict[str, str]:
        return {r["alert"]: r["for"] for g in site_rules(site)["groups"] for r in g["rules"]}

    shipped = {r["alert"]: r["for"] for r in rules()}
    lab = fors(SITE)
    # the lab's seconds where it sets them, the shipped minute elsewhere
    assert (lab["HandoverHostDown"], lab["HandoverFrontendDown"]) == ("2s", "2s")
    assert shipped["HandoverHostDown"] == "1m"
    assert {k: v for k, v in lab.items() if k not in SITE.alerts.rule_for_s} == {  # type: ignore[union-attr]
        k: v
        for k, v in shipped.items()
        if k not in SITE.alerts.rule_for_s  # type: ignore[union-attr]
    }
    # a lost geo site waits for the site's own bound
    assert GEO_SITE.geo is not None
    assert fors(GEO_SITE)["HandoverGeoSiteDown"] == prometheus_duration(GEO_SITE.geo.dead_after_s)
    assert [prometheus_duration(x) for x in (60, 1.5, 0.25)] == ["60s", "1500ms", "250ms"]
    wrong = SITE.model_copy(
        update={
            "alerts": Alerts(webhook_secret=SecretRef(env="X"), rule_for_s={"HandoverHostDwn": 5})
        }
    )
    with pytest.raises(RulesError, match=r"HandoverHostDwn is not a rule.*HandoverHostDown"):
        site_rules(wrong)
    # what `handover rules` writes is a rules file promtool accepts
    out = tmp_path / "rules.yml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "rules",
            "--site",
            str(ROOT / "config/sites/lab.yaml"),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    checked = tool("promtool", "check", "rules", str(out))
    assert checked.returncode == 0 and "SUCCESS: 20 rules found" in checked.stdout, checked
