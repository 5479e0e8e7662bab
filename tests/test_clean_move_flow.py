"""The clean-move flow on the lab, with a real Prefect server: modes, dry run, approval, timeouts,
faults mid-move, a second move, and a killed move run again."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from flows import progress
from flows.approval import resume_with_input
from flows.clean_move import CleanMoveResult, clean_move
from infra.move_process import start_clean_move
from tasks.site_state import snapshot_site
from tests.conftest import (
    ROOT,
    RunningLab,
    cli_move_argv,
    end_transfer,
    place_on_primaries,
    reject_paused_runs,
    submit_long_job,
    wait_for,
)

P = "glite-transfer-channel-agent-urlcopy-"
MOVED = [P + c for c in ("CERN-CERN", "CERN-RAL", "CERN-FNAL", "CERN-IN2P3")]


@pytest.fixture(autouse=True)
def on_primaries(lab: RunningLab, prefect_api: str) -> Iterator[None]:
    place_on_primaries(lab)
    yield
    reject_paused_runs()


def move(lab: RunningLab, **kw: Any) -> CleanMoveResult:
    params: dict[str, Any] = dict(
        site_file=str(lab.site_file), from_host="fts101", to_host="fts102", pause_for_approval=False
    )
    params.update(kw)
    state = clean_move(**params, return_state=True)
    result = state.result(raise_on_failure=False)
    assert isinstance(result, CleanMoveResult), result
    return result


def placement(lab: RunningLab) -> dict[str, Any]:
    snap = snapshot_site(lab.shell)
    return {
        "where": {a.name: snap.where(a.name) for a in lab.site.service.agents},
        "disabled": {h.host: sorted(h.disabled) for h in snap.hosts},
        "channels": snap.channels,
    }


def assert_moved(lab: RunningLab, result: CleanMoveResult, agents: list[str], to: str) -> None:
    where = placement(lab)["where"]
    for a in agents:
        assert where[a] == [to], (a, where[a], result.summary)
    assert set(placement(lab)["channels"].values()) == {"Active"}


@pytest.mark.parametrize("mode", ["pipelined", "full", "staged"])
def test_each_mode_moves_every_agent_without_losing_a_job(lab: RunningLab, mode: str) -> None:
    before = lab.lab.score()
    result = move(lab, mode=mode)
    assert result.status == "completed", result.summary
    assert_moved(lab, result, MOVED, "fts102")
    assert result.jobs_lost == 0
    assert set(result.downtime_s) == {"CERN-CERN", "CERN-RAL", "CERN-FNAL", "CERN-IN2P3"}
    assert all(a.result == "moved" and a.running_on == ["fts102"] for a in result.agents)
    assert [s.outcome for s in result.steps] == ["done"] * len(result.steps)
    after = lab.lab.score()
    assert after.jobs_lost == before.jobs_lost
    assert after.agents_running_twice == []
    # the source will not start them again on reboot
    assert set(MOVED) <= set(placement(lab)["disabled"]["fts101"])


def test_dry_run_changes_nothing(lab: RunningLab) -> None:
    before = placement(lab)
    result = move(lab, dry_run=True, mode="full")
    assert result.status == "dry-run" and result.steps == []
    assert result.plan is not None and len(result.plan.steps) == 7
    assert "nothing changed" in result.summary
    assert placement(lab) == before


def test_start_at_holds_the_first_change_and_is_kept_out_of_the_overhead(lab: RunningLab) -> None:
    """`start_at`: nothing changes before that moment, and the hold is kept out of the overhead
    ratio; a moment without a time zone, or more than a day ahead, is refused with nothing
    changed."""
    before = placement(lab)
    naive = dt.datetime.now() + dt.timedelta(minutes=5)
    refused = move(lab, start_at=naive)
    assert refused.status == "refused" and "needs a time zone" in refused.summary
    far = dt.datetime.now(dt.UTC) + dt.timedelta(hours=25)
    refused = move(lab, start_at=far)
    assert refused.status == "refused" and "at most 24 h" in refused.summary, refused.summary
    assert placement(lab) == before

    # far enough ahead that the plan and its snapshot are done before it, even under load
    start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=8)
    result = move(lab, mode="full", agents=[MOVED[0]], start_at=start)
    assert result.status == "completed", result.summary
    assert_moved(lab, result, [MOVED[0]], "fts102")
    assert result.steps and min(s.started_at for s in result.steps) >= start, result.steps
    timing = result.timing
    assert timing is not None and 0 < timing.held_s <= 8, timing
    need = timing.critical_path_s + timing.snapshots_s
    # the ratio leaves the hold out: counted in, it would be higher by held_s / need
    assert timing.overhead_ratio < round(timing.flow_wall_s / need, 3), timing


def test_drain_timeout_restores_the_channel_and_reports_it(lab: RunningLab) -> None:
    job = submit_long_job(lab, "CERN-CERN", 30)
    before = lab.lab.score().jobs_lost
    try:
        # longer than the load's longest transfer (3 s), so only the 30 s job is left behind
        result = move(lab, drain_timeout_s=5.0)
    finally:
        end_transfer(lab, job)
    assert result.status == "partial", result.summary
    cern = next(a for a in result.agents if a.agent == P + "CERN-CERN")
    assert cern.result == "left-on-source" and cern.running_on == ["fts101"]
    assert "did not drain within 5 s" in cern.note
    assert_moved(lab, result, MOVED[1:], "fts102")
    assert placement(lab)["where"][P + "CERN-CERN"] == ["fts101"]
    assert placement(lab)["channels"]["CERN-CERN"] == "Active"
    assert P + "CERN-CERN" not in placement(lab)["disabled"]["fts101"]
    assert any(s.outcome == "compensation" and "CERN-CERN" in s.sentence for s in result.steps)
    assert lab.lab.score().jobs_lost == before


def test_forced_move_after_drain_timeout_is_reported(lab: RunningLab) -> None:
    job = submit_long_job(lab, "CERN-RAL", 30)
    before = lab.lab.score().jobs_lost
    try:
        result = move(
            lab, drain_timeout_s=1.5, force_after_drain_timeout=True, agents=[P + "CERN-RAL"]
        )
    finally:
        end_transfer(lab, job)
    assert result.status == "completed" and result.forced
    assert result.jobs_lost >= 1 and "FORCED" in result.summary
    assert any(s.outcome == "forced" for s in result.steps)
    assert lab.lab.score().jobs_lost > before


def test_backup_sshd_down_mid_move_leaves_agents_running_on_the_source(lab: RunningLab) -> None:
    fired = threading.Event()

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "step" and data["record"].verb == "stop" and not fired.is_set():
            fired.set()
            lab.lab.fault("fts102", "sshd-down")

    try:
        with progress.sink(on_event):
            result = move(lab, mode="full", agents=MOVED[:2])
    finally:
        lab.lab.heal("fts102")
    assert fired.is_set()
    assert result.status == "partial", result.summary
    for a in result.agents:
        assert a.result == "rolled-back" and a.running_on == ["fts101"], a
        assert "fts102 could not start it" in a.note
    assert placement(lab)["where"][MOVED[0]] == ["fts101"]
    assert placement(lab)["channels"]["CERN-CERN"] == "Active"
    live = placement(lab)["where"]
    assert result.where == {a: live[a] for a in MOVED[:2]}


def _run_in_thread(lab: RunningLab, **kw: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "approval-wait":
            from prefect.context import FlowRunContext

            ctx = FlowRunContext.get()
            assert ctx is not None and ctx.flow_run is not None
            box["run_id"] = ctx.flow_run.id

    def target() -> None:
        with progress.sink(on_event):
            box["result"] = move(lab, pause_for_approval=True, **kw)

    th = threading.Thread(target=target)
    th.start()
    return th, box


def _wait_paused(box: dict[str, Any]) -> Any:
    run_id = wait_for(lambda: box.get("run_id"), 60, "the move to ask for approval")

    def paused() -> bool:
        with get_client(sync_client=True) as client:
            st = client.read_flow_run(run_id).state
        return bool(st and st.is_paused())

    wait_for(paused, 30, "the run to be Paused")
    return run_id


def test_rejected_approval_changes_nothing(lab: RunningLab) -> None:
    before = placement(lab)
    th, box = _run_in_thread(lab)
    run_id = _wait_paused(box)
    resume_with_input(
        run_id,
        run_input={"decision": "reject", "who": "alice", "comment": "not during the LHC fill"},
    )
    th.join(60)
    result = box["result"]
    assert result.status == "rejected" and result.steps == []
    assert result.approval.who == "alice (as typed)" and result.approval.decision == "reject"
    assert "rejected by alice" in result.summary
    assert placement(lab) == before


def test_approved_through_the_api_form_moves(lab: RunningLab) -> None:
    th, box = _run_in_thread(lab, agents=[P + "CERN-IN2P3"])
    run_id = _wait_paused(box)
    resume_with_input(run_id, run_input={"decision": "approve", "who": "bob"})
    th.join(120)
    result = box["result"]
    assert result.status == "completed", result.summary
    assert result.approval.sentence().startswith("approved by bob")
    assert placement(lab)["where"][P + "CERN-IN2P3"] == ["fts102"]


def test_a_second_move_for_the_service_is_refused_naming_the_first(lab: RunningLab) -> None:
    th, box = _run_in_thread(lab)
    run_id = _wait_paused(box)
    try:
        second = move(lab, from_host="fts102", to_host="fts101")
        assert second.status == "refused"
        assert str(run_id) in second.summary and "already running for service" in second.summary
    finally:
        resume_with_input(run_id, run_input={"decision": "reject", "who": "test"})
        th.join(60)
    assert box["result"].status == "rejected"


def test_a_killed_move_run_again_converges(lab: RunningLab, prefect_api: str) -> None:
    # one channel drains slowly, so the move can be killed while it is half done
    before = lab.lab.score()
    job = submit_long_job(lab, "CERN-CERN", 60)
    script = (
        "from flows.clean_move import clean_move; "
        f"clean_move({str(lab.site_file)!r}, 'fts101', 'fts102', mode='pipelined', "
        "pause_for_approval=False)"
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: placement(lab)["where"][P + "CERN-RAL"] == ["fts102"],
            90,
            "the move to finish a first agent",
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    mid = placement(lab)
    assert mid["where"][P + "CERN-CERN"] == ["fts101"]
    assert mid["channels"]["CERN-CERN"] == "Inactive", "killed while CERN-CERN drained"
    # the long transfer ends (sooner than its minute, so the test does not wait for it)
    pid = next(
        t.pid
        for t in snapshot_site(lab.shell, ["fts101"]).hosts[0].transfer_processes
        if t.transfer_id == str(job)
    )
    assert lab.lab.exec("fts101", ["kill", str(pid)]).returncode == 0
    result = move(lab)
    assert result.status == "completed", result.summary
    assert_moved(lab, result, MOVED, "fts102")
    after = lab.lab.score()
    assert after.agents_running_twice == []
    assert after.jobs_lost == before.jobs_lost, "a killed move and its re-run lose no job"


def test_cli_run_json(lab: RunningLab, prefect_api: str) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    res = subprocess.run(
        cli_move_argv(lab, "fts101", "fts102"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    result = CleanMoveResult.model_validate_json(res.stdout)
    assert result.status == "completed"
    assert all(result.where[a] == ["fts102"] for a in MOVED)
    assert set(result.channels.values()) == {"Active"}
    assert result.approval is not None and result.approval.decision == "pre-approved"
    # the run's progress artifact (the bar the UI shows) ended full, described
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[result.flow_run_id])
            )
        )
    progress_bars = [a for a in arts if a.type == "progress"]
    assert len(progress_bars) == 1, [(a.key, a.type) for a in arts]
    assert progress_bars[0].key == "clean-move-progress"
    assert progress_bars[0].data == 100.0
    assert progress_bars[0].description == f"clean-move on {lab.site.site}"


def test_sigterm_mid_move_compensates_and_reports(lab: RunningLab, prefect_api: str) -> None:
    # long enough to outlast a loaded machine's slow start: the test ends it itself
    job = submit_long_job(lab, "CERN-CERN", 300)
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = start_clean_move(lab.site_file, "fts101", "fts102", env=env)
    try:
        # the other channels move while CERN-CERN drains; then the operator's session ends
        wait_for(
            lambda: placement(lab)["where"][P + "CERN-RAL"] == ["fts102"],
            90,
            "CERN-RAL to be moved",
        )
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # a failed wait: the move must not outlive the test
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        end_transfer(lab, job)
    assert proc.returncode != 0
    where = placement(lab)
    assert where["where"][P + "CERN-CERN"] == ["fts101"], "left where it was, still serving"
    assert where["channels"]["CERN-CERN"] == "Active", "its channel set Active again"
    assert all(len(where["where"][a]) == 1 for a in MOVED)
    assert set(where["channels"].values()) == {"Active"}
    assert lab.lab.score().agents_running_twice == []
    result = CleanMoveResult.model_validate_json(out)
    assert result.status == "cancelled" and "SIGTERM" in result.summary
    cern = next(a for a in result.agents if a.agent == P + "CERN-CERN")
    assert cern.running_on == ["fts101"]


# --- hot standby and the drain-aware cut-over ---------------------------------------------------


def _sessions(lab: RunningLab, agent: str, since: float) -> list[tuple[str, float, float | None]]:
    """An agent's DB sessions that took its lock since `since` (epoch s): host, began, ended."""
    import contextlib

    with contextlib.closing(lab.lab.db.connect()) as conn:
        rows = conn.run(
            "SELECT host, extract(epoch FROM started_at), extract(epoch FROM ended_at) FROM "
            "agent_sessions WHERE agent = :a AND (ended_at IS NULL OR "
            "extract(epoch FROM ended_at) >= :s) ORDER BY started_at",
            a=agent,
            s=since,
        )
    return [(str(h), float(b), None if e is None else float(e)) for h, b, e in rows]


def test_hot_standby_takes_the_lock_only_when_the_source_lets_go(lab: RunningLab) -> None:
    """Each agent's start on fts102 is launched before its stop on fts101; its DB session
    begins only once the fts101 agent's has ended: never two serving, no job lost."""
    import time

    before = lab.lab.score()
    since = time.time()
    result = move(lab, mode="pipelined", hot_standby=True)
    assert result.status == "completed", result.summary
    assert result.plan is not None and result.plan.hot_standby
    verbs = [s.verb for s in result.steps]
    assert verbs.count("start-standby") == 4 and verbs.count("await-serving") == 4, verbs
    assert "start" not in verbs  # no plain start after the stop
    for a in MOVED:
        launched = next(s for s in result.steps if s.verb == "start-standby" and a in s.agents)
        stopped = next(s for s in result.steps if s.verb == "stop" and a in s.agents)
        assert launched.ended_at <= stopped.started_at, a
    assert_moved(lab, result, MOVED, "fts102")
    for a in MOVED:
        sessions = _sessions(lab, a, since)
        old = [s for s in sessions if s[0] == "fts101"]
        new = [s for s in sessions if s[0] == "fts102"]
        assert len(old) == 1 and len(new) == 1, (a, sessions)
        assert old[0][2] is not None and new[0][1] >= old[0][2], (a, sessions)
    after = lab.lab.score()
    assert after.agents_running_twice == []
    assert after.jobs_lost == before.jobs_lost


#: the lab's channel reads and writes from handover's machine (a hand-over then sets each
#: channel Active the moment its agent's DB session ends)
DB_WRITES = {
    "channel_states_query": "SELECT name, state FROM channels",
    "channel_set_statement": "UPDATE channels SET state = :state WHERE name = :channel",
}


def with_db_writes(lab: RunningLab, tmp_path: Any, data: dict[str, Any] | None = None) -> str:
    """A site file like the lab's (or `data`), whose database also reads and writes channels."""
    import yaml

    data = data or yaml.safe_load(lab.site_file.read_text())
    data["database"].update(DB_WRITES)
    out = tmp_path / "db-writes.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(out)


def _went_active(lab: RunningLab, channel: str, since: float) -> list[float]:
    import contextlib

    with contextlib.closing(lab.lab.db.connect()) as conn:
        rows = conn.run(
            "SELECT extract(epoch FROM at) FROM channel_history WHERE channel = :c AND "
            "state = 'Active' AND extract(epoch FROM at) >= :s ORDER BY at",
            c=channel,
            s=since,
        )
    return [float(r[0]) for r in rows]


def test_the_hand_over_sets_each_channel_active_once_its_agent_let_go(
    lab: RunningLab, tmp_path: Any
) -> None:
    """With the database able to say when an agent's session ends, each channel goes Active
    then, before its stop command returned, and never before: no agent serving twice, no job
    lost, each standby's session begins after its predecessor's ended."""
    import time

    before = lab.lab.score()
    since = time.time()
    result = move(lab, site_file=with_db_writes(lab, tmp_path), mode="pipelined", hot_standby=True)
    assert result.status == "completed", result.summary
    hand_overs = [s for s in result.steps if s.verb == "hand-over"]
    assert len(hand_overs) == 4 and not any(s.verb == "stop" for s in result.steps)
    assert_moved(lab, result, MOVED, "fts102")
    for a in MOVED:
        ch = a.removeprefix(P)
        ho = next(s for s in hand_overs if a in s.agents)
        assert "as soon as its DB session ended" in ho.sentence, ho.sentence
        (old,) = [s for s in _sessions(lab, a, since) if s[0] == "fts101"]
        (new,) = [s for s in _sessions(lab, a, since) if s[0] == "fts102"]
        assert old[2] is not None and new[1] >= old[2], (a, old, new)
        (active,) = _went_active(lab, ch, since)
        # Active only once the agent let go, and before the step (its stop's check) ended
        assert old[2] <= active <= ho.ended_at.timestamp(), (a, old, active, ho.ended_at)
    after = lab.lab.score()
    assert after.agents_running_twice == []
    assert after.jobs_lost == before.jobs_lost


@pytest.mark.parametrize("db_writes", [False, True], ids=["plain-stop", "hand-over"])
def test_a_primary_that_refuses_to_stop_keeps_serving_alone(
    lab: RunningLab, tmp_path: Any, db_writes: bool
) -> None:
    """fts101's init script says it stopped the agent and did not: the move stops the standby
    waiting on fts102, leaves the agent on fts101 with its channel Active, and the standby never
    took the lock. With the hand-over, the agent's session never ends, so its channel is not set
    Active early either."""
    import time

    import yaml

    data = yaml.safe_load(lab.site_file.read_text())
    data.setdefault("commands", {})["stop_agent"] = [
        "sh",
        "-c",
        '[ "$(hostname)" != fts101 ] && exec service transfer-agents stop --instance "$1"',
        "stop-agent",
        "{agent}",
    ]
    refusing = tmp_path / "refusing-stop.yaml"
    refusing.write_text(yaml.safe_dump(data, sort_keys=False))
    site_file = with_db_writes(lab, tmp_path, data) if db_writes else str(refusing)
    ral = P + "CERN-RAL"
    since = time.time()
    result = move(lab, site_file=site_file, agents=[ral], hot_standby=True)
    assert any(s.verb == "hand-over" for s in result.steps) == db_writes
    assert result.status == "partial", (result.summary, result.agents, result.human_actions)
    (outcome,) = result.agents
    assert outcome.result == "left-on-source" and outcome.running_on == ["fts101"], outcome
    assert "still running" in outcome.note
    assert any(s.verb == "start-standby" and s.outcome == "done" for s in result.steps)
    assert any(
        s.outcome == "compensation" and s.verb == "stop" and s.host == "fts102"
        for s in result.steps
    ), [(s.step, s.outcome, s.sentence) for s in result.steps]
    now = placement(lab)
    assert now["where"][ral] == ["fts101"]
    assert now["channels"]["CERN-RAL"] == "Active"
    assert ral not in now["disabled"]["fts101"]
    assert ral in now["disabled"]["fts102"]  # as before the move
    assert [s for s in _sessions(lab, ral, since) if s[0] == "fts102"] == []
    assert lab.lab.score().agents_running_twice == []


def _end_once_inactive(lab: RunningLab, channel: str, job: int, stop: threading.Event) -> None:
    """End a long transfer 2 s after its channel went Inactive (or when `stop` is set)."""
    import contextlib

    while not stop.wait(0.2):
        with contextlib.closing(lab.lab.db.connect()) as conn:
            rows = conn.run("SELECT state FROM channels WHERE name = :c", c=channel)
        if rows and rows[0][0] == "Inactive":
            if not stop.wait(2.0):
                end_transfer(lab, job)
            return


def test_the_cutover_waits_for_a_long_transfer_and_keeps_its_window(lab: RunningLab) -> None:
    """With the load off: CERN-RAL runs a 14 s transfer, CERN-CERN a 30 s one, window 12 s
    (room for a slow start of the move on a loaded machine). RAL stays Active until its
    transfer needs about 2 s more; CERN goes Inactive when the window ends, its transfer still
    running. The plan says which moment it chose and why."""
    import contextlib

    ral, cern = P + "CERN-RAL", P + "CERN-CERN"
    lab.lab.set_load(on=False)
    jobs: list[int] = []
    try:
        wait_for(
            lambda: (
                not any(
                    t.channel in ("CERN-RAL", "CERN-CERN")
                    for h in snapshot_site(lab.shell).hosts
                    for t in h.transfer_processes
                )
            ),
            30,
            "the load's transfers to end",
        )
        jobs = [submit_long_job(lab, "CERN-CERN", 30.0), submit_long_job(lab, "CERN-RAL", 14.0)]
        before = lab.lab.score().jobs_lost
        # once CERN has gone Inactive its long transfer has served its purpose: it is ended
        # then (a transfer that ends is Done, not lost), so the move need not drain 20 s of it
        stop = threading.Event()
        ender = threading.Thread(target=_end_once_inactive, args=(lab, "CERN-CERN", jobs[0], stop))
        ender.start()
        try:
            result = move(lab, agents=[ral, cern], cutover_window_s=12.0, hot_standby=True)
        finally:
            stop.set()
            ender.join(timeout=30)
    finally:
        lab.lab.set_load(on=True)
        for j in jobs:
            end_transfer(lab, j)
    assert result.status == "completed", result.summary
    assert result.plan is not None
    chosen = {m.channel: m.cutover for m in result.plan.agents}
    assert chosen["CERN-RAL"] is not None and not chosen["CERN-RAL"].now
    assert "a transfer needs" in chosen["CERN-RAL"].reason
    assert chosen["CERN-CERN"] is not None and "beyond the cut-over window" in (
        chosen["CERN-CERN"].reason
    )
    waits = {s.channels[0]: s for s in result.steps if s.verb == "await-cutover"}
    assert waits["CERN-RAL"].measures["waited_s"] >= 2.0, waits["CERN-RAL"].sentence
    assert waits["CERN-CERN"].measures["waited_s"] >= 6.0, waits["CERN-CERN"].sentence
    acting = min(s.started_at for s in waits.values())
    for s in waits.values():  # the bound: the window, plus the query that saw it end
        assert (s.ended_at - acting).total_seconds() <= 12.0 + 2.0, s.sentence
    assert "window" in waits["CERN-CERN"].sentence
    with contextlib.closing(lab.lab.db.connect()) as conn:
        left = {
            ch: float(v)
            for ch, v in conn.run(
                "SELECT j.channel, extract(epoch FROM j.started_at) + j.duration_s - "
                "(SELECT extract(epoch FROM max(h.at)) FROM channel_history h WHERE "
                "h.channel = j.channel AND h.state = 'Inactive') FROM jobs j WHERE j.id = ANY(:i)",
                i=jobs,
            )
        }
    # RAL went Inactive when its transfer needed about the accepted drain (2 s), not 10 s;
    # CERN at the window's end, its transfer still running
    assert 0.0 <= left["CERN-RAL"] <= 2.0 + 1.0, left
    assert left["CERN-CERN"] >= 2.0, left
    assert lab.lab.score().jobs_lost == before
