"""`handover init`'s draft from recorded host readings (pure): what it infers, what it leaves as
TODO, and `check-config` naming each TODO until it is filled in."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from config.loader import SiteConfigError, parse_site
from flows.plans.site_draft import DraftOptions, HostReading, draft_site
from tasks.discover import parse_known_agents

CH = "glite-transfer-channel-agent-urlcopy-"
VO = "glite-transfer-vo-agent-"


def lab_like() -> list[HostReading]:
    """Four hosts as the lab's answer: fts101 runs two channel agents that fts102 backs up (one
    disabled there), fts102 runs one that fts101 backs up, fts105 the VO agents with fts106 as
    their backup, and a front end on fts101 (master) and fts102 (slave)."""
    return [
        HostReading(
            name="fts101",
            address="127.0.1.1",
            port=2222,
            configured={
                f"{CH}CERN-CERN": "running",
                f"{CH}CERN-RAL": "running",
                f"{CH}CERN-PIC": "stopped",
            },
            running=[f"{CH}CERN-CERN", f"{CH}CERN-RAL"],
            version="3.7.1",
            frontend_role="master",
            channels={"CERN-CERN": "Active", "CERN-RAL": "Active"},
        ),
        HostReading(
            name="fts102",
            address="127.0.1.2",
            port=2222,
            configured={
                f"{CH}CERN-CERN": "stopped",
                f"{CH}CERN-RAL": "disabled",
                f"{CH}CERN-PIC": "running",
            },
            running=[f"{CH}CERN-PIC"],
            disabled=[f"{CH}CERN-RAL"],
            version="3.7.1",
            frontend_role="slave",
        ),
        HostReading(
            name="fts105",
            address="127.0.1.5",
            port=2222,
            configured={f"{VO}atlas": "running", f"{VO}cms": "running"},
            running=[f"{VO}atlas", f"{VO}cms"],
            version="3.7.1",
        ),
        HostReading(
            name="fts106",
            address="127.0.1.6",
            port=2222,
            configured={f"{VO}atlas": "stopped", f"{VO}cms": "stopped"},
            version="3.7.0",
        ),
    ]


OPTS = DraftOptions(
    site="mysite",
    service="fts",
    key_file="/etc/handover/id_ed25519",
    known_hosts="/etc/handover/known_hosts",
    db="postgresql://fts@db.example.org:5432/fts",
)


def filled(text: str) -> dict[str, Any]:
    """The draft with its TODOs filled in as an operator would."""
    data: dict[str, Any] = yaml.safe_load(text)
    data["database"]["password"] = {"file": "/etc/handover/db-password"}
    data["dns"] = {
        "server": "127.0.0.1",
        "zone": "example.org",
        "alias": "fts.example.org",
        "tsig_key_name": "handover",
        "tsig_key": {"file": "/etc/handover/tsig"},
    }
    data["slack"]["channel"] = "#fts-ops"
    data["slack"]["approvers"] = ["U0OPS1"]
    for a in data["service"]["agents"]:
        if str(a["backup"]).startswith("TODO"):
            a["backup"] = "fts102"
    return data


def test_the_draft_infers_primaries_backups_roles_and_the_front_end() -> None:
    text = draft_site(lab_like(), OPTS)
    data = yaml.safe_load(text)
    agents = {a.get("channel") or a.get("vo"): a for a in data["service"]["agents"]}
    # where it runs is its primary; another host with it configured (stopped, or disabled) is
    # its backup
    assert agents["CERN-CERN"] == {"channel": "CERN-CERN", "primary": "fts101", "backup": "fts102"}
    assert agents["CERN-RAL"]["backup"] == "fts102"
    assert agents["CERN-PIC"] == {"channel": "CERN-PIC", "primary": "fts102", "backup": "fts101"}
    assert agents["atlas"] == {"vo": "atlas", "primary": "fts105", "backup": "fts106"}
    roles = {h["name"]: h["roles"] for h in data["hosts"]}
    assert roles == {
        "fts101": ["channel-agents"],
        "fts102": ["channel-agents"],
        "fts105": ["vo-agents"],
        "fts106": ["spare"],
    }
    assert data["frontend"]["hosts"] == ["fts101", "fts102"]  # the master first
    assert data["database"] == {
        "kind": "postgresql",
        "host": "db.example.org",
        "port": 5432,
        "database": "fts",
        "user": "fts",
        "password": {"file": "TODO the file holding the password"},
    }
    # each guess says how it was inferred; the versions and the channel states are noted
    assert f"# {CH}CERN-RAL: runs on fts101; backup: configured on fts102 (disabled)" in text
    assert "# installed: fts101 3.7.1, fts102 3.7.1, fts105 3.7.1, fts106 3.7.0" in text
    assert "different versions" in text
    assert "# channel states now: CERN-CERN Active, CERN-RAL Active" in text


def test_check_config_names_every_todo_until_it_is_filled_in() -> None:
    text = draft_site(lab_like(), OPTS)
    with pytest.raises(SiteConfigError) as exc:
        parse_site(yaml.safe_load(text), "draft.yaml")
    paths = [p.path for p in exc.value.problems]
    assert paths == [
        "database.password.file",
        "dns.server",
        "dns.zone",
        "dns.alias",
        "dns.tsig_key_name",
        "dns.tsig_key.file",
        "slack.channel",
        "slack.approvers[0]",
    ], exc.value.problems
    assert all(
        "still to fill in (left by `handover init`)" in p.message for p in exc.value.problems
    )
    site = parse_site(filled(text), "draft.yaml")
    assert [a.name for a in site.agents_on("fts105")] == [f"{VO}atlas", f"{VO}cms"]


def test_what_no_host_says_is_a_todo_and_a_silent_host_is_listed() -> None:
    readings = lab_like()
    readings[3] = HostReading(
        name="fts106",
        address="127.0.1.6",
        reachable=False,
        error="no SSH greeting from 127.0.1.6:22 within 5 s",
    )
    text = draft_site(readings, DraftOptions())
    assert "# fts106 did not answer: no SSH greeting" in text
    data = yaml.safe_load(text)
    atlas = next(a for a in data["service"]["agents"] if a.get("vo") == "atlas")
    assert atlas["backup"] == "TODO the host atlas moves to"
    with pytest.raises(SiteConfigError) as exc:
        parse_site(data, "draft.yaml")
    paths = {p.path for p in exc.value.problems}
    assert {
        "site",
        "service.name",
        "ssh.key_file",
        "ssh.known_hosts",
        "service.agents[3].backup",
        "service.agents[4].backup",
    } <= paths
    # a TODO is reported as such, not as the invalid value it is
    assert not any("not a host" in p.message for p in exc.value.problems), exc.value.problems


def test_the_init_scripts_status_names_every_configured_agent() -> None:
    status = "\n".join(
        [
            f"{CH}CERN-CERN (pid 42) is running (serving, version 3.7.1, config abc)",
            f"{CH}CERN-RAL is stopped (disabled)",
            f"{CH}CERN-PIC is stopped",
            f"{VO}atlas is dead (lost its lock)",
            "some-other-daemon is running",
        ]
    )
    assert parse_known_agents(status) == {
        f"{CH}CERN-CERN": "running",
        f"{CH}CERN-RAL": "disabled",
        f"{CH}CERN-PIC": "stopped",
        f"{VO}atlas": "dead",
    }
