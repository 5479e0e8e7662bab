"""The clean-move planner on recorded site snapshots (pure: no server)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from config.loader import load_site
from config.site import Site
from flows.plans.clean_move import MoveRequest, plan_clean_move, plan_markdown
from tasks.site_state import AgentProcess, HostSnapshot, SiteSnapshot

SITE: Site = load_site(Path(__file__).resolve().parent.parent / "config/sites/lab.yaml")
T0 = dt.datetime(2026, 11, 22, 14, 0, tzinfo=dt.UTC)
P = "glite-transfer-channel-agent-urlcopy-"
ON_101 = [P + c for c in ("CERN-CERN", "CERN-RAL", "CERN-FNAL", "CERN-IN2P3")]
ON_102 = [P + c for c in ("CERN-PIC", "CERN-CNAF")]
ACTIVE = dict.fromkeys(SITE.channels, "Active")


def host(
    name: str,
    agents: list[str],
    transfers: dict[str, int] | None = None,
    disabled: list[str] | None = None,
    reachable: bool = True,
) -> HostSnapshot:
    return HostSnapshot(
        host=name,
        reachable=reachable,
        error=None if reachable else "connection refused",
        error_kind=None if reachable else "transient",
        agents=[AgentProcess(name=a, pid=100 + i, user="edguser") for i, a in enumerate(agents)],
        transfers=transfers or {},
        disabled=disabled or [],
        taken_at=T0,
    )


def recorded(
    h101: HostSnapshot, h102: HostSnapshot, channels: dict[str, str] | None = None
) -> SiteSnapshot:
    return SiteSnapshot(
        site="lab",
        taken_at=T0,
        hosts=[h101, h102],
        channels=ACTIVE if channels is None else channels,
    )


# the lab as it starts: fts101 runs 4 channel agents with transfers, fts102 runs 2
STEADY = recorded(
    host(
        "fts101",
        ON_101,
        {"CERN-CERN": 2, "CERN-RAL": 0, "CERN-FNAL": 3, "CERN-IN2P3": 1},
        disabled=ON_102,
    ),
    host("fts102", ON_102, {"CERN-PIC": 1}, disabled=ON_101),
)


def req(**kw: object) -> MoveRequest:
    base: dict[str, object] = dict(
        from_host="fts101", to_host="fts102", expected_transfer_s=180, expected_restart_s=5
    )
    base.update(kw)
    return MoveRequest.model_validate(base)


def test_pipelined_moves_each_agent_as_its_channel_drains() -> None:
    plan = plan_clean_move(SITE, STEADY, req(mode="pipelined"))
    assert plan.ok and [m.agent for m in plan.agents] == ON_101
    assert all(m.action == "move" and m.state == "on-source" for m in plan.agents)
    first, per_agent = plan.phases
    assert [s.verb for c in first.chains for s in c.steps] == ["set-inactive"]
    assert first.chains[0].steps[0].channels == ["CERN-CERN", "CERN-RAL", "CERN-FNAL", "CERN-IN2P3"]
    assert len(per_agent.chains) == 4
    for chain in per_agent.chains:
        assert [s.verb for s in chain.steps] == [
            "wait-drained",
            "write-disabled",
            "stop",
            "clear-disabled",
            "start",
            "set-active",
        ]
        assert [s.host for s in chain.steps] == ["fts101"] * 3 + ["fts102"] * 3
    # a channel with no running transfer is down only for the restart
    assert plan.estimated_downtime_s["CERN-RAL"] == 5
    assert plan.estimated_downtime_s["CERN-CERN"] == 185


def test_full_mode_is_the_manual_procedure_with_one_stop_of_every_agent() -> None:
    plan = plan_clean_move(SITE, STEADY, req(mode="full"))
    (phase,) = plan.phases
    (chain,) = phase.chains
    assert [s.verb for s in chain.steps] == [
        "set-inactive",
        "wait-drained",
        "write-disabled",
        "stop",
        "clear-disabled",
        "start",
        "set-active",
    ]
    stop = chain.steps[3]
    assert stop.all_agents and stop.commands == ["service transfer-agents stop"]
    assert chain.steps[0].commands[0] == "glite-transfer-channel-set -S Inactive CERN-CERN"
    assert chain.steps[5].commands[0] == (
        "service transfer-agents start --instance glite-transfer-channel-agent-urlcopy-CERN-CERN"
    )
    # every channel waits for the slowest: the full move's downtime is the longest drain for all
    assert set(plan.estimated_downtime_s.values()) == {185}


def test_full_mode_of_some_agents_stops_them_one_by_one() -> None:
    plan = plan_clean_move(SITE, STEADY, req(mode="full", agents=ON_101[:2]))
    stop = next(s for s in plan.steps if s.verb == "stop")
    assert not stop.all_agents
    assert stop.commands == [f"service transfer-agents stop --instance {a}" for a in ON_101[:2]]


def test_staged_mode_moves_one_agent_after_the_other() -> None:
    plan = plan_clean_move(SITE, STEADY, req(mode="staged"))
    (phase,) = plan.phases
    (chain,) = phase.chains
    assert len(chain.steps) == 4 * 7
    assert chain.steps[0].channels == ["CERN-CERN"]
    assert chain.steps[7].channels == ["CERN-RAL"]
    assert plan.estimated_duration_s == sum(plan.estimated_downtime_s.values())


@pytest.mark.parametrize("down", ["fts101", "fts102"])
def test_an_unreachable_host_fails_the_pre_checks(down: str) -> None:
    snap = recorded(
        host("fts101", ON_101, reachable=down != "fts101"),
        host("fts102", ON_102, reachable=down != "fts102"),
    )
    plan = plan_clean_move(SITE, snap, req())
    assert not plan.ok and not plan.steps
    assert any(f"{down} is unreachable" in p and "emergency move" in p for p in plan.problems)


def test_an_agent_running_on_both_hosts_of_the_move_is_moved_on() -> None:
    """fts102 rebooted after a move rolled back while it was down: its boot started a copy that
    waits for the DB lock fts101's holds. A re-run of the move goes on: the copy on fts102 is
    its standby, fts101's is drained and stopped (one of them holds the lock, always)."""
    snap = recorded(host("fts101", ON_101), host("fts102", [*ON_102, ON_101[0]]))
    plan = plan_clean_move(SITE, snap, req())
    assert plan.ok, plan.problems
    cern = next(m for m in plan.agents if m.agent == ON_101[0])
    assert (cern.state, cern.action) == ("on-source", "move")
    assert any(
        ON_101[0] in n and "runs on both" in n and "a copy fts102 started" in n for n in plan.notes
    )
    assert any(
        s.verb == "stop" and s.host == "fts101" and ON_101[0] in s.agents for s in plan.steps
    )


def test_rerun_after_a_crash_finishes_what_was_left() -> None:
    # killed mid-move: CERN-CERN started on fts102 but its channel still Inactive, CERN-RAL
    # stopped on fts101 but not started, CERN-FNAL and CERN-IN2P3 not touched yet
    channels = {**ACTIVE, "CERN-CERN": "Inactive", "CERN-RAL": "Inactive"}
    snap = recorded(
        host("fts101", ON_101[2:], disabled=[*ON_102, ON_101[0], ON_101[1]]),
        host("fts102", [*ON_102, ON_101[0]], disabled=ON_101[1:]),
        channels,
    )
    plan = plan_clean_move(SITE, snap, req())
    actions = {m.agent.removeprefix(P): m.action for m in plan.agents}
    assert actions == {
        "CERN-CERN": "finish",
        "CERN-RAL": "start",
        "CERN-FNAL": "move",
        "CERN-IN2P3": "move",
    }
    chains = {c.name: [s.verb for s in c.steps] for c in plan.phases[-1].chains}
    # the copy on fts102 counts once it serves (it may wait for a lock a stale session holds):
    # if it does not, its sessions are killed and it is started again
    assert chains["CERN-CERN"] == [
        "write-disabled",
        "clear-disabled",
        "await-serving",
        "set-active",
    ]
    [served] = [s for s in plan.phases[-1].chains[0].steps if s.verb == "await-serving"]
    assert (served.host, [f.verb for f in served.fallback]) == (
        "fts102",
        ["drop-sessions", "drop-sessions", "start"],
    )
    assert chains["CERN-RAL"] == ["write-disabled", "clear-disabled", "start", "set-active"]
    assert plan.phases[0].chains[0].steps[0].channels == ["CERN-FNAL", "CERN-IN2P3"]


def test_nothing_to_move_when_the_move_is_complete() -> None:
    snap = recorded(
        host("fts101", [], disabled=ON_101 + ON_102), host("fts102", ON_102 + ON_101, disabled=[])
    )
    plan = plan_clean_move(SITE, snap, req())
    assert plan.ok and plan.agents == [] and plan.steps == []
    assert "nothing to move" in plan.notes[0]


def test_an_agent_stopped_by_hand_is_left_alone() -> None:
    snap = recorded(
        host("fts101", ON_101[1:], disabled=ON_102), host("fts102", ON_102, disabled=ON_101)
    )
    plan = plan_clean_move(SITE, snap, req())
    assert ON_101[0] not in [m.agent for m in plan.agents]
    assert any("no move of it began" in n for n in plan.notes)


def test_explicit_agents_are_checked() -> None:
    plan = plan_clean_move(
        SITE, STEADY, req(agents=[P + "CERN-NOWHERE", "glite-transfer-vo-agent-atlas"])
    )
    assert not plan.ok
    assert any("CERN-NOWHERE is not in site" in p for p in plan.problems)
    assert any("configured on fts105 and fts106" in p for p in plan.problems)


def test_same_source_and_target_is_refused() -> None:
    plan = plan_clean_move(SITE, STEADY, req(to_host="fts101"))
    assert not plan.ok and "both fts101" in plan.problems[0]


def test_unknown_host_is_refused() -> None:
    plan = plan_clean_move(SITE, STEADY, req(to_host="fts999"))
    assert not plan.ok and "fts999 is not in site lab" in plan.problems[0]


def test_vo_agents_move_without_channel_steps() -> None:
    vo = ["glite-transfer-vo-agent-atlas", "glite-transfer-vo-agent-cms"]
    snap = SiteSnapshot(
        site="lab",
        taken_at=T0,
        channels=ACTIVE,
        hosts=[host("fts105", vo), host("fts106", [], disabled=vo)],
    )
    plan = plan_clean_move(SITE, snap, req(from_host="fts105", to_host="fts106"))
    assert plan.ok and len(plan.phases) == 1
    for chain in plan.phases[0].chains:
        assert [s.verb for s in chain.steps] == [
            "write-disabled",
            "stop",
            "clear-disabled",
            "start",
        ]
    assert plan.estimated_downtime_s == {}


def test_unknown_channel_states_fail_the_pre_checks() -> None:
    plan = plan_clean_move(SITE, recorded(STEADY.hosts[0], STEADY.hosts[1], {}), req())
    assert not plan.ok and "channel states could not be read" in plan.problems


def test_a_channel_no_host_could_read_fails_the_pre_checks() -> None:
    # fts101 reached the database for every channel but one (its read failed on every host)
    channels = {c: s for c, s in ACTIVE.items() if c != "CERN-RAL"}
    snap = recorded(STEADY.hosts[0], STEADY.hosts[1], channels).model_copy(
        update={"channel_errors": {"CERN-RAL": "fts101: exited 1: cannot reach the database"}}
    )
    plan = plan_clean_move(SITE, snap, req())
    assert not plan.ok
    assert any(
        "CERN-RAL could not be read" in p and "reach the database" in p for p in plan.problems
    )


def test_plan_markdown_shows_hosts_and_commands() -> None:
    md = plan_markdown(plan_clean_move(SITE, STEADY, req(mode="full")))
    assert "`service transfer-agents stop`" in md and "`fts102` start" in md
    bad = plan_markdown(plan_clean_move(SITE, STEADY, req(to_host="fts101")))
    assert "nothing will change" in bad


def test_drain_timeout_message_names_channels_and_the_last_error() -> None:
    from tasks.drain import DrainTimeout

    exc = DrainTimeout(
        "fts101",
        {"CERN-CERN": 2, "CERN-RAL": 0, "CERN-FNAL": -1},
        60,
        "fts101 (127.0.1.1:2222): connection refused",
    )
    msg = str(exc)
    assert "CERN-CERN (2 running)" in msg and "CERN-FNAL (never read)" in msg
    assert "CERN-RAL" not in msg
    assert "the last look at fts101 failed: fts101 (127.0.1.1:2222): connection refused" in msg
    assert "channels are set Active again" in msg


# --- the drain-aware cut-over and hot standby ---------------------------------------------------


def test_the_cutover_rule_waits_for_long_transfers_within_the_window() -> None:
    from flows.plans.cutover import decide

    assert decide([], 2.0, 0.0, 30.0).now
    short = decide([1.5, 0.4], 2.0, 0.0, 30.0)
    assert short.now and short.drain_s == 1.5
    long = decide([8.9, 1.5], 2.0, 0.0, 30.0)
    assert not long.now and long.after_s == pytest.approx(6.9) and long.drain_s == 2.0
    beyond = decide([40.0], 2.0, 0.0, 30.0)
    assert not beyond.now and beyond.after_s == 30.0 and beyond.drain_s == pytest.approx(10.0)
    assert "beyond the cut-over window" in beyond.reason
    # the same transfer when the window has been waited out: go now, whatever still runs
    ended = decide([10.0], 2.0, 30.0, 30.0)
    assert ended.now and ended.drain_s == 10.0 and "window of 30 s has ended" in ended.reason
    # part of the window gone: only what is left of it
    assert decide([40.0], 2.0, 25.0, 30.0).after_s == pytest.approx(5.0)


def test_a_cutover_window_gives_each_channel_its_moment_and_the_plan_says_why() -> None:
    snap = STEADY.model_copy(
        update={"transfer_eta": {"CERN-CERN": [1.0], "CERN-RAL": [9.0], "CERN-FNAL": [50.0]}}
    )
    plan = plan_clean_move(
        SITE, snap, req(mode="pipelined", cutover_window_s=20, cutover_drain_s=2, hot_standby=True)
    )
    assert plan.ok
    cut = {m.channel: m.cutover for m in plan.agents}
    assert cut["CERN-CERN"] is not None and cut["CERN-CERN"].now
    assert cut["CERN-RAL"] is not None and cut["CERN-RAL"].after_s == pytest.approx(7.0)
    assert cut["CERN-FNAL"] is not None and cut["CERN-FNAL"].after_s == 20.0
    assert cut["CERN-IN2P3"] is not None and cut["CERN-IN2P3"].now  # nothing runs
    # no shared "all channels Inactive" phase: each chain begins with its own cut-over
    assert [p.name for p in plan.phases] == ["move each agent as its channel drains"]
    for chain in plan.phases[0].chains:
        verbs = [s.verb for s in chain.steps]
        # the target is prepared (standby launched) a little before the moment, while the
        # channel still serves; then the cut-over itself
        assert verbs[:4] == ["await-cutover", "write-disabled", "clear-disabled", "start-standby"]
        assert verbs[4:7] == ["await-cutover", "start-standby", "set-inactive"]
        prepare, cut, refresh = chain.steps[0], chain.steps[4], chain.steps[5]
        assert prepare.lead_s > 0 and cut.lead_s == 0
        assert cut.window_s == 20 and cut.drain_s == 2
        # a standby that waited through a put-off moment is launched again before the cut-over
        assert refresh.max_wait_s > 0 and chain.steps[3].max_wait_s == 0
    md = plan_markdown(plan)
    assert "CERN-RAL: in about 7.0 s: a transfer needs 9.0 s more" in md
    assert "CERN-FNAL: in about 20.0 s" in md and "beyond the cut-over window" in md
    # without the transfers' times the window cannot be used, and the plan says so
    blind = plan_clean_move(SITE, STEADY, req(mode="pipelined", cutover_window_s=20))
    assert blind.phases[0].name == "stop new transfers"
    assert any("every channel goes Inactive at once" in n for n in blind.notes)


def test_hot_standby_launches_the_start_before_the_stop_within_the_lock_wait() -> None:
    plan = plan_clean_move(
        SITE,
        STEADY,
        req(mode="pipelined", hot_standby=True, lock_wait_s=60, expected_transfer_s=3),
    )
    for chain in plan.phases[-1].chains:
        verbs = [s.verb for s in chain.steps]
        assert verbs.index("start-standby") < verbs.index("wait-drained") < verbs.index("stop")
        assert verbs.index("stop") < verbs.index("set-active") < verbs.index("await-serving")
        assert "start" not in verbs
        assert next(s for s in chain.steps if s.verb == "start-standby").host == "fts102"
    # a drain that may outlast the lock wait: the standby is launched after it
    slow = plan_clean_move(
        SITE,
        STEADY,
        req(mode="pipelined", hot_standby=True, lock_wait_s=60, expected_transfer_s=180),
    )
    fnal = next(c for c in slow.phases[-1].chains if c.name == "CERN-FNAL")
    verbs = [s.verb for s in fnal.steps]
    assert verbs.index("wait-drained") < verbs.index("start-standby") < verbs.index("stop")
    # the full procedure, as done by hand, stays the reference: no standby there
    full = plan_clean_move(SITE, STEADY, req(mode="full", hot_standby=True))
    assert not full.hot_standby and "start-standby" not in [s.verb for s in full.steps]


def test_the_standby_of_an_interrupted_move_is_not_an_agent_running_twice() -> None:
    # the run died after fts102's standby was launched: the agent runs on both hosts, listed in
    # fts101's .disabled file and no longer in fts102's
    snap = recorded(
        host("fts101", ON_101, disabled=[*ON_102, ON_101[1]]),
        host("fts102", [*ON_102, ON_101[1]], disabled=[ON_101[0], *ON_101[2:]]),
    )
    plan = plan_clean_move(SITE, snap, req(mode="pipelined", hot_standby=True))
    assert plan.ok, plan.problems
    ral = next(m for m in plan.agents if m.agent == ON_101[1])
    assert ral.state == "on-source" and ral.action == "move"
    assert any("standby of an interrupted move" in n for n in plan.notes)
    # on both hosts without that trace: a copy the target started, the move goes on too
    both = recorded(host("fts101", ON_101), host("fts102", [*ON_102, ON_101[1]]))
    again = plan_clean_move(SITE, both, req())
    assert again.ok and any("a copy fts102 started" in n for n in again.notes)


def test_hand_over_sets_the_channel_active_when_the_database_sees_the_lock_released() -> None:
    """With a PostgreSQL or Oracle database (sessions name their program) and a channel write
    statement, the hot-standby chain stops the agent and sets its channel Active in one
    hand-over step; MariaDB, or no statement, keeps the stop then set-active order."""
    assert SITE.database is not None

    def with_db(**db: object) -> Site:
        assert SITE.database is not None
        return SITE.model_copy(update={"database": SITE.database.model_copy(update=db)})

    writes = {
        "channel_states_query": "SELECT name, state FROM channels",
        "channel_set_statement": "UPDATE channels SET state = :state WHERE name = :channel",
    }
    hot = req(mode="pipelined", hot_standby=True, lock_wait_s=60, expected_transfer_s=3)
    plan = plan_clean_move(with_db(**writes), STEADY, hot)
    for chain in plan.phases[-1].chains:
        verbs = [s.verb for s in chain.steps]
        assert "stop" not in verbs and "set-active" not in verbs, verbs
        assert verbs[-3:] == ["wait-drained", "hand-over", "await-serving"], verbs
        ho = chain.steps[-2]
        assert ho.host == "fts101" and ho.target == "fts102"
        assert ho.channels == [chain.name] and len(ho.agents) == 1
        # the plan shows the stop command and the write, with the condition between them
        assert ho.commands[0] == f"service transfer-agents stop --instance {ho.agents[0]}"
        assert "once they ended: UPDATE channels SET state = :state" in ho.commands[1]
    assert "goes Active the moment the database shows" in plan_markdown(plan)
    for site in (with_db(kind="mariadb", port=3306, **writes), with_db()):
        plain = plan_clean_move(site, STEADY, hot)
        verbs = [s.verb for s in plain.steps]
        assert "hand-over" not in verbs and verbs.count("stop") == 4, verbs
        assert "goes Active the moment" not in plan_markdown(plain)
    # without hot standby there is no standby to take the lock: no hand-over either
    cold = plan_clean_move(with_db(**writes), STEADY, req(mode="pipelined"))
    assert "hand-over" not in [s.verb for s in cold.steps]
