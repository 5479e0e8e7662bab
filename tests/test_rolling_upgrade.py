"""The rolling upgrade on the lab, with load on: the real SPMA and YAIM stand-ins, the
restart that keeps running transfers, the policies for a failed host, the maintenance windows and
the schedule. One lab for the module: the tests run in file order and each says the state it
leaves."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.plans.windows import check_window
from flows.rolling_upgrade import UpgradeResult, report_markdown, rolling_upgrade
from infra.lab import software
from infra.serve import deployment_entry, deployment_specs
from tests.conftest import ROOT, RunningLab, wait_for

HOSTS = ["fts101", "fts102", "fts105", "fts106"]


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("upgrade-sites")


def variant(lab: RunningLab, where: Path, name: str, **sections: Any) -> Path:
    """The lab's site file with some sections replaced (the same lab, another policy)."""
    data = yaml.safe_load(lab.site_file.read_text())
    for key, value in sections.items():
        if key == "policy":
            # the runs here are approved up front (`pause_for_approval=False`)
            data.setdefault("procedures", {})["rolling-upgrade"] = {"approval": "none", **value}
        else:
            data[key] = value
    out = where / f"{name}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def run(lab: RunningLab, site_file: Path | None = None, **kw: Any) -> UpgradeResult:
    state = rolling_upgrade(
        str(site_file or lab.site_file), pause_for_approval=False, return_state=True, **kw
    )
    result = state.result(raise_on_failure=False)
    assert isinstance(result, UpgradeResult), result
    return result


def versions(lab: RunningLab) -> dict[str, tuple[str, str]]:
    """Each serving agent's (host, version), as `handover lab status` shows them."""
    return {
        a.name: (h.name, a.version)
        for h in lab.lab.status().hosts
        for a in h.agents
        if a.state == "serving"
    }


def installed(lab: RunningLab, host: str) -> str:
    res = lab.shell.run(host, "installed_version")
    return res.stdout.strip()


def on_host(lab: RunningLab, host: str, script: str) -> None:
    res = lab.shell.run_argv(host, ["sh", "-c", script], timeout=120)
    assert res.ok, (host, script, res.stdout, res.stderr)


def active_jobs(lab: RunningLab) -> list[int]:
    with contextlib.closing(lab.lab.db.connect()) as conn:
        return [int(r[0]) for r in conn.run("SELECT id FROM jobs WHERE state = 'Active'")]


def job_states(lab: RunningLab, ids: list[int]) -> dict[str, int]:
    with contextlib.closing(lab.lab.db.connect()) as conn:
        return dict(
            conn.run("SELECT state, count(*) FROM jobs WHERE id = ANY(:i) GROUP BY state", i=ids)
        )


def window_at(t: dt.datetime, duration_s: float) -> dict[str, Any]:
    """A daily window opening at `t`'s minute (UTC)."""
    return {"cron": f"{t.minute} {t.hour} * * *", "duration_s": duration_s, "timezone": "UTC"}


@pytest.fixture(autouse=True)
def _prefect(prefect_api: str) -> None:
    """Every test here runs flows against the session's Prefect server."""


# --- nothing changes -----------------------------------------------------------------------------


def test_a_dry_run_changes_nothing(lab: RunningLab) -> None:
    before = versions(lab)
    assert {v for _h, v in before.values()} == {"1"}
    r = run(lab, version="2", dry_run=True)
    assert r.status == "dry-run", r.summary
    assert r.plan is not None and [h.host for h in r.plan.todo] == HOSTS
    assert versions(lab) == before
    assert all(installed(lab, h).startswith("glite-data-transfer-agents-1-") for h in HOSTS)


def test_a_version_that_is_not_one_is_refused(lab: RunningLab) -> None:
    r = run(lab, version="--help")
    assert r.status == "refused" and "is not a version" in r.summary, r.summary


def test_outside_the_window_it_is_refused_naming_the_next_one(
    lab: RunningLab, site_dir: Path
) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    site = variant(lab, site_dir, "closed", policy={"windows": [window_at(later, 600)]})
    r = run(lab, site, version="2")
    assert r.status == "refused" and "outside every maintenance window" in r.summary, r.summary
    assert f"{later:%Y-%m-%d %H:%M} UTC" in r.summary, r.summary
    assert r.window is not None and r.window.next_opens_at is not None
    assert {v for _h, v in versions(lab).values()} == {"1"}


def test_a_blackout_is_refused(lab: RunningLab, site_dir: Path) -> None:
    today = dt.datetime.now(dt.UTC).date()
    site = variant(
        lab,
        site_dir,
        "blackout",
        policy={
            "windows": [{"cron": "* * * * *", "duration_s": 3600}],
            "blackouts": [{"start": str(today), "end": str(today), "reason": "CHEP week"}],
        },
    )
    r = run(lab, site, version="2")
    assert r.status == "refused" and "blackout" in r.summary and "CHEP week" in r.summary
    assert {v for _h, v in versions(lab).values()} == {"1"}


def test_a_host_that_would_overrun_the_window_is_not_started(
    lab: RunningLab, site_dir: Path
) -> None:
    # a window that opened 60-120 s ago and lasts 900 s: 780-840 s left, enough to start the
    # run however slow the machine, never enough for a host expected to take 890 s
    opened = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    site = variant(
        lab,
        site_dir,
        "short",
        policy={"windows": [window_at(opened, 900)], "expected_host_s": 890},
    )
    check = check_window(yaml_policy(site), dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))
    assert check.status == "open", check
    r = run(lab, site, version="2")
    assert r.status == "partial", r.summary
    assert r.left == HOSTS and "left for the next window" in r.summary, r.summary
    assert any("left for the next run" in h for h in r.human_actions)
    assert {v for _h, v in versions(lab).values()} == {"1"}


def yaml_policy(site_file: Path) -> Any:
    from config.loader import load_site

    return load_site(site_file).policy("rolling-upgrade")


# --- the upgrade ----------------------------------------------------------------------------------


def test_upgrade_under_load_keeps_every_transfer(lab: RunningLab) -> None:
    lab.lab.score(reset=True)
    wait_for(lambda: len(active_jobs(lab)) >= 8 or None, 30, "transfers to run")
    running = active_jobs(lab)
    r = run(lab, version="2")
    assert r.status == "completed", (r.summary, r.human_actions)
    assert [o.host for o in r.hosts if o.result == "upgraded"] == HOSTS
    assert {v for _h, v in versions(lab).values()} == {"2"}
    assert len(versions(lab)) == len(lab.site.service.agents)
    # every agent's time down is reported, by the run and, independently, by the database
    assert set(r.missed_s) == {a.name for a in lab.site.service.agents}
    assert r.missed_p95_s is not None and r.missed_max_s is not None
    gaps = lab.lab.score().restart_gaps_s
    assert set(gaps) == set(r.missed_s), gaps
    # the transfers that ran across the restarts finish, none lost
    wait_for(
        lambda: "Active" not in job_states(lab, running) or None,
        60,
        "the transfers that ran across the restart to finish",
    )
    assert job_states(lab, running) == {"Done": len(running)}
    time.sleep(2)
    score = lab.lab.score()
    assert score.jobs_lost == 0, score
    assert score.transfers_by_version.get("2", 0) > 0, score.transfers_by_version
    report = report_markdown(r)
    assert "p95" in report and "fts106" in report


def test_config_only_keeps_yaims_report(lab: RunningLab) -> None:
    digests = {a.name: a.config for h in lab.lab.status().hosts for a in h.agents}
    info = lab.lab.paths.site_info
    info.write_text(info.read_text().replace("FTA_LOG_LEVEL=INFO", "FTA_LOG_LEVEL=DEBUG"))
    r = run(lab, config_only=True)
    assert r.status == "completed", (r.summary, r.human_actions)
    assert r.config_only and sorted(r.configure_report) == HOSTS
    for host in HOSTS:
        assert any("LOG_LEVEL INFO -> DEBUG" in ln for ln in r.configure_report[host]), (
            r.configure_report[host]
        )
    after = {a.name: a.config for h in lab.lab.status().hosts for a in h.agents}
    assert all(after[n] != d for n, d in digests.items()), (digests, after)
    assert {v for _h, v in versions(lab).values()} == {"2"}
    assert "LOG_LEVEL INFO -> DEBUG" in report_markdown(r)


def test_forcing_outside_the_window_records_the_reason(lab: RunningLab, site_dir: Path) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
    site = variant(lab, site_dir, "forced", policy={"windows": [window_at(later, 600)]})
    reason = "CVE-2026-4242: the fix cannot wait for Tuesday"
    r = run(lab, site, config_only=True, hosts=["fts106"], force_window=reason)
    assert r.status == "completed", r.summary
    assert r.forced_reason == reason and r.window is not None and r.window.status == "closed"
    assert reason in report_markdown(r)


def test_the_schedule_opens_with_the_window_and_its_run_checks_it(
    lab: RunningLab, site_dir: Path
) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=4)
    window = window_at(later, 1800)
    site = variant(
        lab,
        site_dir,
        "scheduled",
        upgrade={"target_version": "4"},
        policy={"windows": [window, {**window, "timezone": "Europe/Zurich"}]},
    )
    specs = {deployment_entry(s["name"]): s for _fl, s in deployment_specs(str(site))}
    schedules = specs["rolling-upgrade"]["schedules"]
    assert [(s.cron, s.timezone) for s in schedules] == [
        (window["cron"], "UTC"),
        (window["cron"], "Europe/Zurich"),
    ]
    assert specs["window-notice"]["interval"] == 300
    # a run as the schedule starts it (no version: the site's target), now: outside its window
    r = run(lab, site)
    assert r.status == "refused" and r.version == "4", r.summary
    assert "the next window opens at" in r.summary
    assert {v for _h, v in versions(lab).values()} == {"2"}


def test_the_window_notice_says_what_the_window_will_do_once(
    lab: RunningLab, site_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.window_notice import NoticeResult, window_notice
    from infra.fakeslack import FakeSlack

    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=20)
    site = variant(
        lab,
        site_dir,
        "notice",
        upgrade={"target_version": "4"},
        policy={"windows": [window_at(soon, 1800)], "notice_s": 3600},
    )
    with FakeSlack(tokens={"xoxb-notice"}) as slack:
        monkeypatch.setenv("HANDOVER_SLACK_BOT_TOKEN", "xoxb-notice")
        monkeypatch.setenv("HANDOVER_SLACK_API_URL", slack.base_url)
        first = window_notice(str(site), return_state=True).result()
        again = window_notice(str(site), return_state=True).result()
        texts = [m.text for m in slack.messages.values()]
    assert isinstance(first, NoticeResult) and isinstance(again, NoticeResult)
    [notice] = first.notices
    assert notice.posted and notice.opens_at.strftime("%H:%M") == soon.strftime("%H:%M")
    # the plan as the site is now: version 4 on every host, in order
    assert "upgrade 4 host(s) to version 4" in notice.text, notice.text
    assert notice.text.index("fts101") < notice.text.index("fts106")
    assert texts == [notice.text]
    assert again.notices == [], "the same window announced twice"


def test_a_rerun_after_a_kill_continues_where_it_stopped(lab: RunningLab, prefect_api: str) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "run",
            "rolling-upgrade",
            "--site",
            str(lab.site_file),
            "--version",
            "4",
            "--yes",
            "--json",
        ],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: (
                all(versions(lab).get(a, ("", ""))[1] == "4" for a in lab.agents_on("fts101"))
                or None
            ),
            120,
            "fts101 to run version 4",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    r = run(lab, version="4")
    assert r.status == "completed", (r.summary, r.human_actions)
    assert r.plan is not None and "fts101" in [h.host for h in r.plan.done], r.plan
    assert all(s.host != "fts101" for s in r.steps), [s.sentence for s in r.steps]
    assert {v for _h, v in versions(lab).values()} == {"4"}


def test_after_the_canary_a_human_decides_again(
    lab: RunningLab, site_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two approvals in one run (before it, and after the canary), on a site that takes the
    gateway's decisions only: the first approved, the run upgrades the canary and pauses again,
    under a pause of its own; the first decision, seal included, resumed again at the second
    pause is ignored (its seal names the first pause); a reject at the second stops the run with
    the canary alone upgraded."""
    import threading

    from prefect.client.orchestration import get_client

    from flows import progress
    from flows.approval import resume_with_input
    from flows.seals import seal, seal_key

    secret = "canary-test-signing-secret-0123456789"
    monkeypatch.setenv("HANDOVER_SLACK_SIGNING_SECRET", secret)
    key = seal_key(secret)
    site = variant(
        lab,
        site_dir,
        "canary",
        upgrade={"canary": "fts105", "approve_after_canary": True},
        policy={"approval": "required", "approval_via": "gateway", "approval_timeout_s": 600},
    )
    box: dict[str, Any] = {}
    ignored: list[dict[str, Any]] = []

    def watch(kind: str, data: dict[str, Any]) -> None:
        if kind == "approval-wait":
            box["run_id"] = data["run_id"]
        elif kind == "approval-ignored":
            ignored.append(data)

    def target() -> None:
        with progress.sink(watch):
            state = rolling_upgrade(str(site), version="5", return_state=True)
        box["r"] = state.result(raise_on_failure=False)

    def pause_key() -> str | None:
        with get_client(sync_client=True) as client:
            st = client.read_flow_run(box["run_id"]).state
        return str(st.state_details.pause_key) if st is not None and st.is_paused() else None

    def gateway_says(decision: str, key_now: str) -> dict[str, str]:
        who = "<@U0LABOPS1>"
        return {
            "decision": decision,
            "who": who,
            "source": "Slack",
            "seal": seal(key, str(box["run_id"]), key_now, decision, who, "Slack"),
        }

    worker = threading.Thread(target=target)
    worker.start()
    try:
        wait_for(lambda: box.get("run_id"), 120, "the run to ask before it starts")
        first = str(wait_for(pause_key, 60, "the first pause"))
        assert {v for _h, v in versions(lab).values()} == {"4"}  # nothing before the decision
        approved = gateway_says("approve", first)
        resume_with_input(box["run_id"], run_input=approved)
        second = str(
            wait_for(
                lambda: (pause_key() or first) != first and pause_key(),
                180,
                "the run to ask again after its canary",
            )
        )
        # the canary alone is on the new version while the run waits
        now = versions(lab)
        assert {v for a, (h, v) in now.items() if h == "fts105"} == {"5"}, now
        assert {v for a, (h, v) in now.items() if h != "fts105"} == {"4"}, now
        # the first decision replayed at the second pause: its seal names the first pause
        resume_with_input(box["run_id"], run_input=approved)
        wait_for(lambda: ignored, 60, "the replayed decision to be ignored")
        third = str(wait_for(pause_key, 60, "the run to wait again"))
        assert third not in (first, second)
        assert {v for a, (h, v) in versions(lab).items() if h != "fts105"} == {"4"}
        resume_with_input(box["run_id"], run_input=gateway_says("reject", third))
        worker.join(120)
    finally:
        if worker.is_alive():
            from tests.conftest import reject_paused_runs

            reject_paused_runs()
            worker.join(60)
    r = box["r"]
    assert r.status == "partial", r.summary
    assert [o.host for o in r.hosts if o.result == "upgraded"] == ["fts105"]
    assert r.left == ["fts101", "fts102", "fts106"] and "after the canary" in r.summary
    assert len(ignored) == 1
    reset_to_4(lab, "fts105")


# --- a broken version on the second host --------------------------------------------------------


@pytest.fixture
def broken_on_fts102(lab: RunningLab) -> Iterator[None]:
    """Version 5 fails to start on fts102 only; afterwards fts101 and fts102 are put back on 4."""
    software.mark_broken(lab.lab.paths.repo_dir, "5", "libglobus.so.7: cannot open", ["fts102"])
    try:
        yield
    finally:
        software.mark_broken(lab.lab.paths.repo_dir, "5", None, None)


def reset_to_4(lab: RunningLab, *hosts: str) -> None:
    for h in hosts:
        on_host(lab, h, "spma_wrapper.sh --version 4 && service transfer-agents restart")
    assert {v for _h, v in versions(lab).values()} == {"4"}


@pytest.mark.parametrize("policy", ["halt", "rollback", "move"])
def test_a_broken_version_on_the_second_host_halts_the_run(
    lab: RunningLab, site_dir: Path, broken_on_fts102: None, policy: str
) -> None:
    site = variant(lab, site_dir, f"on-{policy}", upgrade={"on_failure": policy})
    r = run(lab, site, version="5")
    assert r.status == "failed", r.summary
    by = {o.host: o for o in r.hosts}
    assert by["fts101"].result == "upgraded" and by["fts101"].after == "5"
    assert r.left == ["fts105", "fts106"], r.left
    for untouched in ("fts105", "fts106"):
        assert installed(lab, untouched).startswith("glite-data-transfer-agents-4-")
    assert "libglobus.so.7" in by["fts102"].note, by["fts102"]
    now = versions(lab)
    on_102 = lab.agents_on("fts102")
    if policy == "halt":
        assert by["fts102"].result == "failed"
        assert all(a not in now for a in on_102), now  # down, as the report says
        assert any("rolling-upgrade --version 4 --hosts fts102" in h for h in r.human_actions)
        reset_to_4(lab, "fts101", "fts102")
    elif policy == "rollback":
        assert by["fts102"].result == "rolled-back" and by["fts102"].after == "4"
        assert all(now[a] == ("fts102", "4") for a in on_102), now
        assert installed(lab, "fts102").startswith("glite-data-transfer-agents-4-")
        reset_to_4(lab, "fts101")
    else:
        assert by["fts102"].result == "moved", by["fts102"]
        assert all(now[a] == ("fts101", "5") for a in on_102), now
        assert any("repair it, then move them back" in h for h in r.human_actions)
    assert lab.lab.score().agents_running_twice == []
