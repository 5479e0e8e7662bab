"""`handover status`: every site and service at once. An FTS site's summary from one sensor
reading (pure, from a recorded reading), a site that cannot be read listed with the reason
without failing the others, `--service` and `--json`, and the exit codes (0 nothing wrong,
1 something is, 2 cannot say)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from config.loader import load_site
from flows.plans.snapshot import AgentProcess, HostSnapshot, SiteSnapshot
from infra.site_status import SiteStatus, exit_code, fts_summary, read_statuses, site_files
from tasks.sensors import SensorReading
from tests.conftest import LAB_SITE, ROOT

SITE = load_site(LAB_SITE)
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def _reading(
    placed: dict[str, list[str]], channels: dict[str, str], down: tuple[str, ...] = ()
) -> SensorReading:
    """A reading where each host in `placed` runs those agents (serving), `down` answer not."""
    hosts = [
        HostSnapshot(host=h.name, reachable=False, error="connection refused", taken_at=NOW)
        if h.name in down
        else HostSnapshot(
            host=h.name,
            reachable=True,
            agents=[
                AgentProcess(name=a, pid=100 + i, user="edguser")
                for i, a in enumerate(placed.get(h.name, []))
            ],
            taken_at=NOW,
        )
        for h in SITE.hosts
    ]
    return SensorReading(
        taken_at=NOW,
        duration_s=0.1,
        snapshot=SiteSnapshot(site=SITE.site, taken_at=NOW, hosts=hosts, channels=channels),
        agent_states={h: dict.fromkeys(agents, "serving") for h, agents in placed.items()},
    )


def _primaries() -> dict[str, list[str]]:
    placed: dict[str, list[str]] = {}
    for a in SITE.service.agents:
        placed.setdefault(a.primary, []).append(a.name)
    return placed


def test_an_fts_site_in_order_has_nothing_wrong() -> None:
    fts = fts_summary(SITE, _reading(_primaries(), dict.fromkeys(SITE.channels, "Active")))
    assert fts.down == {} and fts.nowhere == [] and fts.twice == {}
    assert {h: len(a) for h, a in fts.serving.items()} == {
        "fts101": 4,
        "fts102": 2,
        "fts105": 2,
        "fts106": 0,
    }
    assert fts.problems == [] and fts.channels_unread == []


def test_what_is_wrong_with_an_fts_site_is_said() -> None:
    """A host down, an agent on two hosts, an agent nowhere, a channel Inactive, a channel not
    read this time (not a problem: the next reading reads it)."""
    placed = _primaries()
    twice = placed["fts101"][0]
    placed["fts102"].append(twice)
    nowhere = placed["fts102"].pop(0)
    channels = dict.fromkeys(SITE.channels[1:], "Active")
    channels[SITE.channels[-1]] = "Inactive"
    fts = fts_summary(SITE, _reading(placed, channels, down=("fts106",)))
    assert fts.down == {"fts106": "connection refused"}
    assert fts.twice == {twice: ["fts101", "fts102"]}
    assert fts.nowhere == [nowhere]
    assert fts.channels_unread == [SITE.channels[0]]
    assert fts.problems == [
        "fts106 does not answer: connection refused",
        f"{nowhere} serves on no host",
        f"{twice} serves on fts101 and fts102 at once",
        f"channel {SITE.channels[-1]} is Inactive",
    ]
    # the VO agents' hosts: fts105 serves them, fts106 (their backup) is down: nothing missing
    assert not any("atlas" in a or "cms" in a for a in fts.nowhere)


def test_the_exit_code_says_wrong_before_cannot_say() -> None:
    ok, wrong, unknown = (SiteStatus(file="f", ok=v) for v in (True, False, None))
    assert exit_code([ok, ok]) == 0
    assert exit_code([ok, unknown]) == 2
    assert exit_code([unknown, wrong, ok]) == 1


def test_every_site_file_of_the_site_directories_is_read_once(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    for d in (first, second):
        d.mkdir()
        (d / "x.yaml").write_text("site: x\n")
    (second / "y.yml").write_text("site: y\n")
    assert site_files([first, second, tmp_path / "none"]) == [first / "x.yaml", second / "y.yml"]
    assert {f.stem for f in site_files()} >= {"lab", "geo-lab", "cern-fts"}


def test_a_site_that_cannot_be_read_is_listed_and_the_others_are_read(tmp_path: Path) -> None:
    """A broken file says why; a site whose hosts do not answer (no key here) says so; neither
    holds the other, and each within the bound."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("site: [not, a, name]\n")
    data = yaml.safe_load(LAB_SITE.read_text())
    data["ssh"]["key_file"] = str(tmp_path / "no-such-key")
    silent = tmp_path / "silent.yaml"
    silent.write_text(yaml.safe_dump(data, sort_keys=False))
    bad, quiet = read_statuses([broken, silent], timeout_s=10)
    assert bad.ok is None and bad.site is None
    assert bad.error is not None and bad.error.startswith("cannot read the site file: site")
    assert quiet.ok is None and quiet.site == "lab" and quiet.service == "fts-lab"
    assert quiet.error is not None and "no host answers (4 hosts" in quiet.error
    assert quiet.took_s < 15


def _status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "status", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("as_json", [False, True])
def test_the_command_lists_every_site_given_and_filters_by_service(
    tmp_path: Path, as_json: bool
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("site: [not, a, name]\n")
    data = yaml.safe_load(LAB_SITE.read_text())
    data["ssh"]["key_file"] = str(tmp_path / "no-such-key")
    lab = tmp_path / "lab.yaml"
    lab.write_text(yaml.safe_dump(data, sort_keys=False))
    done = _status(
        "--site", str(lab), "--site", str(broken), "--timeout", "10", *(["--json"] * as_json)
    )
    assert done.returncode == 2, done.stdout + done.stderr  # nothing wrong seen, two unknown
    if as_json:
        sites = json.loads(done.stdout)["sites"]
        assert [s["site"] for s in sites] == ["lab", None]
        assert all(s["ok"] is None and s["error"] for s in sites)
    else:
        assert "lab (service fts-lab, fts2-agents)" in done.stdout
        assert "no host answers" in done.stdout and "cannot read the site file" in done.stdout
    # a service none of them has: said, exit 2 (the behaviour of a tool no site has)
    none = _status("--site", str(lab), "--service", "portal")
    assert none.returncode == 2 and "no service or replicated tool 'portal'" in none.stderr
    assert "services and tools: fts-lab" in none.stderr
