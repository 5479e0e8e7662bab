"""`handover lab twin`: a lab that mirrors a real site, from its site file and a recorded
snapshot of it (`tests/plan_cases/snapshots/cern-fts-production.json`, taken on the twin of
`config/sites/cern-fts.yaml` under the lab's load)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.loader import load_site, parse_site
from flows.plans.clean_move import MoveRequest, plan_clean_move
from flows.plans.snapshot import SiteSnapshot
from infra.lab.settings import lab_settings
from infra.lab.twin import TwinRefused, twin_site_data
from tests.conftest import ROOT, require_lab

CERN = ROOT / "config" / "sites" / "cern-fts.yaml"
SNAPSHOT = ROOT / "tests" / "plan_cases" / "snapshots" / "cern-fts-production.json"
UPGRADE = ROOT / "tests" / "plan_cases" / "snapshots" / "cern-fts-upgrade.json"


def recorded() -> SiteSnapshot:
    return SiteSnapshot.model_validate_json(SNAPSHOT.read_text())


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two plans (as data) differ, leaf by leaf."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(set(a) | set(b))
            for d in differences(a.get(k), b.get(k), f"{path}.{k}")
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: {a!r} | {b!r}"]


@pytest.mark.unit
def test_the_twin_keeps_the_names_and_maps_the_addresses() -> None:
    real = load_site(CERN)
    data = twin_site_data(
        real, octet=240, state_dir=Path("/var/tmp/handover-lab/t"), snapshot=recorded()
    )
    twin = parse_site(data)
    lab = lab_settings(twin)  # a valid lab site
    assert twin.site == "cern-fts-twin"
    assert [h.name for h in twin.hosts] == [h.name for h in real.hosts]
    assert [h.address for h in twin.hosts] == ["127.0.240.1", "127.0.240.2", "127.0.240.3"]
    assert twin.service == real.service
    assert twin.frontend is not None and real.frontend is not None
    assert (twin.frontend.hosts, twin.frontend.move_agents) == (real.frontend.hosts, "follow")
    assert twin.dns is not None and real.dns is not None
    assert (twin.dns.zone, twin.dns.alias, twin.dns.ttl_s) == ("cern.ch", "fts.cern.ch", 60)
    assert twin.dns.server == "127.0.0.1"
    assert twin.slack is None and twin.database is not None and twin.database.kind == "postgresql"
    assert twin.upgrade == real.upgrade.model_copy(update={"approve_after_canary": False})
    assert lab.extra_versions == ["2.1.0"]
    # the load shaped like the snapshot's running transfers, per channel
    assert lab.active_per_channel == {
        "CERN-CERN": 3,
        "CERN-CNAF": 1,
        "CERN-FNAL": 4,
        "CERN-IN2P3": 2,
        "CERN-PIC": 2,
        "CERN-RAL": 3,
    }
    # and how long they run, from their ages: the transatlantic channel's the longest (its
    # oldest of 4 had run 13 s: 16.25 s), scaled down to the twin's 10 s
    assert lab.transfers.profile("CERN-FNAL").short_s == (7.5, 12.5)
    assert lab.transfers.profile("CERN-CNAF").short_s == (0.375, 0.625)  # one, just begun


@pytest.mark.unit
def test_a_clean_move_plans_on_the_twin_as_on_the_site_but_for_the_site_and_database() -> None:
    """What rehearsing on the twin rests on: the same snapshot gives the same plan, the site's
    name and the database's kind (the lab's PostgreSQL for the site's Oracle) aside."""
    real = load_site(CERN)
    twin = parse_site(
        twin_site_data(real, octet=240, state_dir=Path("/var/tmp/x"), snapshot=recorded())
    )
    for mode in ("pipelined", "full", "staged"):
        req = MoveRequest(from_host="fts101", to_host="fts102", mode=mode)
        diff = differences(
            plan_clean_move(real, recorded(), req).model_dump(mode="json"),
            plan_clean_move(twin, recorded(), req).model_dump(mode="json"),
        )
        assert diff[-1] == ".site: 'cern-fts' | 'cern-fts-twin'", diff
        assert diff[:-1] and all(
            "'oracle: kill the sessions" in d and "'postgresql: kill the sessions" in d
            for d in diff[:-1]
        ), diff


@pytest.mark.unit
def test_a_site_the_lab_cannot_mirror_is_refused_with_each_reason() -> None:
    data = yaml.safe_load(CERN.read_text())
    data["commands"]["stop_all"] = ["/usr/local/sbin/fts-stop-everything"]
    with pytest.raises(TwinRefused) as exc:
        twin_site_data(parse_site(data), octet=240, state_dir=Path("/var/tmp/x"))
    [p] = exc.value.problems
    assert p.path == "commands.stop_all" and "fts-stop-everything" in p.message
    # a listing without the elapsed time (an older profile's) is still the lab's `ps`
    data = yaml.safe_load(CERN.read_text())
    data["commands"]["list_processes"] = ["ps", "-eo", "pid=,user=,args="]
    assert twin_site_data(parse_site(data), octet=240, state_dir=Path("/var/tmp/x"))
    geo = load_site(ROOT / "config" / "sites" / "geo-lab.yaml")
    with pytest.raises(TwinRefused, match="geo lab"):
        twin_site_data(geo, octet=240, state_dir=Path("/var/tmp/x"))
    other = recorded().model_copy(deep=True)
    other.hosts[0].host = "elsewhere01"
    with pytest.raises(TwinRefused, match="hosts elsewhere01 are not the site's"):
        twin_site_data(load_site(CERN), octet=240, state_dir=Path("/var/tmp/x"), snapshot=other)


@pytest.mark.unit
def test_the_twins_transfers_last_as_long_as_the_sites_from_their_ages() -> None:
    """Each channel's transfers on the twin last about as long as the site's, estimated from
    the ages `ps` gave (and the remaining times, when the database gave them); transfers of
    minutes are scaled down, all by one factor, and the report says so."""
    from flows.plans.snapshot import TransferProcess
    from infra.lab.twin import MAX_TWIN_TRANSFER_S, channel_duration, twin_load

    # steady load: ages uniform over the duration, the oldest of n is n/(n+1) of it
    assert channel_duration([2.0, 4.0, 6.0], None) == 8.0
    # with what each still needs: mean age + mean remaining time
    assert channel_duration([2.0, 4.0], [5.0, 3.0]) == 7.0
    snap = recorded().model_copy(deep=True)
    fts101 = snap.host("fts101")
    fts101.transfer_processes = [
        TransferProcess(channel="CERN-FNAL", transfer_id=str(i), pid=100 + i, age_s=age)
        for i, age in enumerate((60.0, 300.0, 540.0))  # transatlantic: minutes
    ] + [TransferProcess(channel="CERN-RAL", transfer_id="9", pid=99, age_s=15.0)]
    # CERN-CERN's listed without its age (another listing's line)
    fts101.transfer_processes.append(TransferProcess(channel="CERN-CERN", transfer_id="1", pid=9))
    load = twin_load(snap)
    assert load.durations_s == {
        "CERN-FNAL": 720.0,
        "CERN-RAL": 30.0,
        # fts102's, as recorded: seconds
        "CERN-CNAF": 0.0,
        "CERN-IN2P3": 1.5,
        "CERN-PIC": 1.5,
    }
    assert load.scale == 720.0 / MAX_TWIN_TRANSFER_S
    assert "72 times shorter than the site's" in load.sentence(), load.sentence()
    data = twin_site_data(load_site(CERN), octet=240, state_dir=Path("/var/tmp/x"), snapshot=snap)
    transfers = lab_settings(parse_site(data)).transfers
    assert transfers.profile("CERN-FNAL").short_s == (7.5, 12.5)  # 720 s / 72, +-25 %
    # 30 s / 72 is shorter than the shortest a twin runs
    assert transfers.profile("CERN-RAL").long_s == (0.375, 0.625)
    assert transfers.profile("CERN-CNAF").short_s == (0.375, 0.625)
    assert transfers.profile("CERN-CERN") == transfers  # no ages: the lab's durations
    assert "72 times shorter" in data["description"]
    # a snapshot without ages (a listing without the elapsed time) shapes the counts only
    for h in snap.hosts:
        h.transfer_processes = [t.model_copy(update={"age_s": None}) for t in h.transfer_processes]
    assert twin_load(snap).durations_s == {} and twin_load(snap).scale == 1.0
    assert "the snapshot gives no ages" in twin_load(snap).sentence()


@pytest.mark.unit
def test_the_rehearsals_report_puts_the_twins_downtime_on_the_sites_clock() -> None:
    """On a twin whose transfers ran shorter than the site's, the report gives each channel's
    downtime on the twin, the plan's estimate, and the twin's scaled back to the site's clock."""
    import datetime as dt

    from flows.plans.rehearsal import RehearsalRecord
    from infra.rehearse import Rehearsal, report_markdown

    real = load_site(CERN)
    plan = plan_clean_move(real, recorded(), MoveRequest(from_host="fts101", to_host="fts102"))
    record = RehearsalRecord(
        site="cern-fts",
        procedure="clean-move",
        fingerprint="f",
        at=dt.datetime(2026, 12, 7, 21, 40, tzinfo=dt.UTC),
        passed=True,
        plans_match=True,
        jobs_lost=0,
        agents_twice=0,
        downtime_s={"CERN-FNAL": 8.0, "CERN-CERN": 0.6},
    )
    scaled = report_markdown(
        Rehearsal(record=record, real_plan=plan, load="the twin's load: ...", scale=1.625)
    )
    assert (
        "| channel | downtime on the twin | the plan's estimate | the twin's, 1.62 times" in scaled
    )
    assert "| CERN-FNAL | 8.00 s | " in scaled and " 13.0 s |" in scaled, scaled
    assert "- the twin's load: ..." in scaled
    plain = report_markdown(Rehearsal(record=record, real_plan=plan))
    assert "times longer" not in plain and plain.rstrip().endswith("under the snapshot's load.")


@pytest.mark.lab
def test_the_twin_comes_up_with_the_sites_agents_on_their_primaries(tmp_path: Path) -> None:
    """`handover lab twin` of the CERN site file and its recorded snapshot: a lab of its three
    hosts, each agent serving on its primary, the upgrade's target in the package repository,
    each channel's agent running at most as many transfers as the snapshot saw."""
    from infra.cli import main
    from infra.lab.lab import Lab

    require_lab()
    out = tmp_path / "twin.yaml"
    argv = ["lab", "twin", "--site", str(CERN), "--snapshot", str(SNAPSHOT), "--octet", "241"]
    # never the state of a twin an operator runs
    argv += ["--state-dir", f"/var/tmp/handover-lab/twintest-{os.getpid()}"]
    assert main([*argv, "--out", str(out)]) == 0
    lab = Lab.from_file(out)
    try:
        site = lab.site
        serving = lab.serving(site, lab.record())
        assert {a.name: serving.get(a.name) for a in site.service.agents} == {
            a.name: {a.primary} for a in site.service.agents
        }
        assert (lab.paths.repo_dir / "glite-data-transfer-agents" / "2.1.0").is_dir()
        rt = json.loads(
            (
                lab.paths.host_dir("fts101") / "etc.upper" / "transfer-agents" / "lab.json"
            ).read_text()
        )
        assert {a["channel"]: a.get("max_active") for a in rt["agents"] if a["channel"]} == {
            "CERN-CERN": 3,
            "CERN-RAL": 3,
            "CERN-FNAL": 4,
            "CERN-IN2P3": 2,
            "CERN-PIC": 2,
            "CERN-CNAF": 1,
        }
    finally:
        report = lab.down()
        lab.remove_state()
    assert report["leftovers"] == [], report


@pytest.mark.unit
def test_the_plans_compared_and_a_rehearsal_clearing_only_its_own_plan() -> None:
    import datetime as dt

    from flows.plans.rehearsal import (
        RehearsalRecord,
        compare_plans,
        fingerprint,
        rehearsal_refusal,
    )

    real = load_site(CERN)
    twin = parse_site(
        twin_site_data(real, octet=240, state_dir=Path("/var/tmp/x"), snapshot=recorded())
    )
    req = MoveRequest(from_host="fts101", to_host="fts102", mode="full")
    mine, theirs = plan_clean_move(real, recorded(), req), plan_clean_move(twin, recorded(), req)
    cmp = compare_plans(mine, theirs)
    assert cmp.matches and cmp.unexplained == [] and fingerprint(mine) == fingerprint(theirs)
    assert {d.explained for d in cmp.differences} == {
        "the twin's site is named after the site, with -twin",
        "the twin's database is the lab's PostgreSQL, the site's oracle",
    }
    # a twin whose agent moves elsewhere is not the site: unexplained, no match
    moved = twin.model_dump(mode="json", exclude_defaults=True)
    moved["service"]["agents"][0]["backup"] = "fts105"
    other = parse_site(moved)
    bad = compare_plans(mine, plan_clean_move(other, recorded(), req))
    assert not bad.matches and bad.unexplained
    now = dt.datetime(2026, 12, 7, 21, 40, tzinfo=dt.UTC)
    rec = RehearsalRecord(
        site="cern-fts",
        procedure="clean-move",
        fingerprint=fingerprint(mine),
        at=now,
        passed=True,
        plans_match=True,
        jobs_lost=0,
        agents_twice=0,
        downtime_s={"CERN-RAL": 4.3},
    )
    cmd = "handover rehearse clean-move ..."
    assert "requires a rehearsal" in str(
        rehearsal_refusal(None, mine, now=now, within_s=60, command=cmd, sealed=True)
    )
    assert rehearsal_refusal(rec, mine, now=now, within_s=60, command=cmd, sealed=True) is None
    # a record without `handover rehearse`'s seal (a Variable written through the API) clears
    # nothing, however good it looks
    forged = rehearsal_refusal(rec, mine, now=now, within_s=60, command=cmd, sealed=False)
    assert "does not carry the seal of `handover rehearse`" in str(forged)
    staged = plan_clean_move(real, recorded(), req.model_copy(update={"mode": "staged"}))
    assert "another plan" in str(
        rehearsal_refusal(rec, staged, now=now, within_s=60, command=cmd, sealed=True)
    )
    later = now + dt.timedelta(hours=2)
    assert "h old" in str(
        rehearsal_refusal(rec, mine, now=later, within_s=3600, command=cmd, sealed=True)
    )
    failed = rec.model_copy(update={"passed": False, "jobs_lost": 2})
    assert "failed" in str(
        rehearsal_refusal(failed, mine, now=now, within_s=60, command=cmd, sealed=True)
    )
    assert rec.sentence() == (
        "rehearsed at 21:40 UTC on the twin: 0 lost, 0 serving twice, 4.3 s downtime at most"
    )


@pytest.mark.lab
def test_rehearsals_pass_and_an_unrehearsed_move_is_refused(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`handover rehearse clean-move` of the CERN site from its recorded snapshot: the real plan
    and the twin's match, the move runs on the twin with nothing lost, and the rehearsal is kept
    for the real site. On a site whose policy requires a rehearsal (the twin itself, which was
    never rehearsed), a clean move is refused before anything changes. Then `handover rehearse
    rolling-upgrade` from a recorded upgrade snapshot passes too."""
    from flows.clean_move import clean_move
    from infra.cli import main
    from infra.lab.lab import Lab
    from tasks.rehearsals import read_rehearsal

    require_lab()
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    # the CERN site's Slack signing secret is a Prefect Secret block: the rehearsal's seal is
    # keyed from it (its webhook secret's file does not exist here)
    from prefect.blocks.system import Secret

    Secret(value="rehearsal-test-signing-secret").save("fts-slack-signing-secret", overwrite=True)
    state = Path(f"/var/tmp/handover-lab/rehearsetest-{os.getpid()}")
    argv = ["rehearse", "clean-move", "--site", str(CERN), "--snapshot", str(SNAPSHOT)]
    argv += ["--from", "fts101", "--to", "fts102", "--mode", "full", "--octet", "242"]
    argv += ["--state-dir", str(state), "--keep"]
    assert main(argv) == 0
    record = read_rehearsal("cern-fts", "clean-move")
    assert record is not None and record.passed and record.plans_match
    assert (record.jobs_lost, record.agents_twice) == (0, 0)
    assert set(record.downtime_s) <= {"CERN-CERN", "CERN-RAL", "CERN-FNAL"}
    assert (state / "site.yaml").exists(), "the twin was not kept (--keep)"
    lab = Lab.from_file(state / "site.yaml")
    try:
        data = yaml.safe_load((state / "site.yaml").read_text())
        # the twin ran the snapshot's load: the transatlantic channel's transfers the longest
        fnal = data["lab"]["transfers"]["per_channel"]["CERN-FNAL"]
        assert fnal["short_s"] == fnal["long_s"] == [7.5, 12.5], fnal
        assert "1.62 times shorter than the site's" in data["description"], data["description"]
        data["procedures"]["clean-move"]["rehearse"] = "required"
        required = tmp_path / "required.yaml"
        required.write_text(yaml.safe_dump(data, sort_keys=False))
        refused = clean_move(
            site_file=str(required),
            from_host="fts102",
            to_host="fts101",
            mode="full",
            pause_for_approval=False,
            return_state=True,
        )
        assert "requires a rehearsal on the twin first" in (refused.message or ""), refused
        serving = lab.serving(lab.site, lab.record())
        assert serving.get("glite-transfer-channel-agent-urlcopy-CERN-CERN") == {"fts102"}
    finally:
        report = lab.down()
        lab.remove_state()
    assert report["leftovers"] == [], report
    # the rolling upgrade to the site's target, from a recorded upgrade snapshot (each host on
    # 2.0.3): the twin's hosts run 2.0.3, the plans match, every host ends on 2.1.0
    argv = ["rehearse", "rolling-upgrade", "--site", str(CERN), "--snapshot", str(UPGRADE)]
    assert main([*argv, "--octet", "253", "--state-dir", f"{state}-up"]) == 0
    up = read_rehearsal("cern-fts", "rolling-upgrade")
    assert up is not None and up.passed and up.plans_match and up.jobs_lost == 0
    # what a run of the real site with `rehearse: required` is told: its plan was rehearsed
    # (the upgrade), or another one was (a staged move, when the full one was rehearsed)
    from config.site import ProcedurePolicy
    from flows.plans.rolling_upgrade import UpgradeRequest, UpgradeSnapshot, plan_rolling_upgrade
    from flows.rehearsal_gate import rehearsal_gate
    from tasks.rehearsals import keep_rehearsal

    real = load_site(CERN)
    required = ProcedurePolicy(rehearse="required")
    snap = UpgradeSnapshot.model_validate_json(UPGRADE.read_text())
    upgrade = plan_rolling_upgrade(
        real, snap, UpgradeRequest(version="2.1.0", batch=1, canary="fts105")
    )
    assert up.seal and rehearsal_gate(real, "rolling-upgrade", required, upgrade, "cmd") == (
        None,
        up.sentence(),
    )
    staged = plan_clean_move(
        real, recorded(), MoveRequest(from_host="fts101", to_host="fts102", mode="staged")
    )
    refusal, _ = rehearsal_gate(real, "clean-move", required, staged, "cmd")
    assert refusal is not None and "was of another plan" in refusal
    # the same record written through the API without the seal, or with a forged one
    for seal in ("", "0" * 64):
        keep_rehearsal(up.model_copy(update={"seal": seal}))
        refusal, _ = rehearsal_gate(real, "rolling-upgrade", required, upgrade, "cmd")
        assert refusal is not None and "does not carry the seal" in refusal
