"""Which agents an emergency move takes off a failed host, and where to (pure: no server)."""

from __future__ import annotations

from flows.plans.emergency_move import choose_moves
from tasks.site_state import HostSnapshot, SiteSnapshot
from tests.test_clean_move_plan import ON_101, ON_102, SITE, T0, host


def others(*hosts: HostSnapshot) -> SiteSnapshot:
    return SiteSnapshot(site="lab", taken_at=T0, hosts=list(hosts))


def test_case_a_moves_what_runs_there_to_its_other_host() -> None:
    moves = choose_moves(SITE, "fts101", host("fts101", ON_101), others(host("fts102", ON_102)))
    assert [(m.agent, m.to) for m in moves] == [(a, "fts102") for a in ON_101]


def test_case_a_an_agent_moved_there_earlier_goes_back_to_its_primary() -> None:
    moves = choose_moves(
        SITE, "fts101", host("fts101", ON_101 + ON_102[:1]), others(host("fts102", ON_102[1:]))
    )
    assert {m.agent: m.to for m in moves} == {
        **dict.fromkeys(ON_101, "fts102"),
        ON_102[0]: "fts102",
    }


def test_case_a_an_agent_stopped_on_the_host_is_left_alone() -> None:
    moves = choose_moves(SITE, "fts101", host("fts101", ON_101[1:]), others(host("fts102", [])))
    assert [m.agent for m in moves] == ON_101[1:]


def test_without_the_hosts_snapshot_whatever_its_partner_does_not_run_moves() -> None:
    # fts101 ran everything (after a clean move onto it) and crashed
    moves = choose_moves(SITE, "fts101", None, others(host("fts102", [])))
    assert sorted(m.agent for m in moves) == sorted(ON_101 + ON_102)
    assert {m.to for m in moves} == {"fts102"}


def test_without_the_hosts_snapshot_agents_served_elsewhere_stay() -> None:
    moves = choose_moves(SITE, "fts101", None, others(host("fts102", ON_102 + ON_101[:1])))
    assert [m.agent for m in moves] == ON_101[1:]


def test_a_spare_whose_agents_run_on_their_primary_has_nothing_to_move() -> None:
    vo = ["glite-transfer-vo-agent-atlas", "glite-transfer-vo-agent-cms"]
    assert choose_moves(SITE, "fts106", None, others(host("fts105", vo))) == []


def test_case_a_a_rerun_starts_what_an_earlier_run_stopped_but_could_not_start() -> None:
    # an earlier emergency move wrote .disabled and stopped the agents on fts101, then their
    # starts on fts102 failed (it could not reach the database): nothing serves them
    stopped = host("fts101", [], disabled=ON_101)
    moves = choose_moves(SITE, "fts101", stopped, others(host("fts102", ON_102)))
    assert [(m.agent, m.to) for m in moves] == [(a, "fts102") for a in ON_101]


def test_case_a_a_stranded_agent_stays_when_its_other_host_cannot_be_seen() -> None:
    stopped = host("fts101", [], disabled=ON_101)
    unseen = host("fts102", [], reachable=False)
    assert choose_moves(SITE, "fts101", stopped, others(unseen)) == []


def test_case_a_an_agent_the_host_lost_moves_one_stopped_by_hand_stays() -> None:
    # fts101 crashed and rebooted: CERN-CERN's old session still holds its lock, so it could
    # not start again; CERN-RAL was stopped by someone (no session): left alone
    rebooted = host("fts101", ON_101[2:])
    moves = choose_moves(
        SITE, "fts101", rebooted, others(host("fts102", ON_102)), sessions_of=[ON_101[0]]
    )
    assert [m.agent for m in moves] == [ON_101[0], *ON_101[2:]]


def test_case_c_launches_standbys_frees_the_locks_and_sends_nothing_to_the_host() -> None:
    from flows.plans.emergency_move import (
        KILL_AFTER_LAUNCH_S,
        EmergencyRequest,
        plan_emergency_move,
    )
    from flows.plans.snapshot import HostWithPartners

    plan = plan_emergency_move(
        SITE,
        HostWithPartners(host=None, partners=others(host("fts102", []))),
        EmergencyRequest(host="fts101", reach="silent"),
    )
    assert plan.case == "C" and [p.name for p in plan.phases] == [
        "launch the standbys on the backups",
        "free their DB locks and collect them",
    ]
    launch, collect = plan.phases
    assert [s.verb for c in launch.chains for s in c.steps] == ["clear-disabled", "start-standby"]
    [kill] = collect.chains[0].steps
    # every session of the host, once the standbys ask for their locks
    assert (kill.verb, kill.host, kill.agents, kill.delay_s) == (
        "drop-sessions",
        "fts101",
        [],
        KILL_AFTER_LAUNCH_S,
    )
    [(await_, active)] = [c.steps for c in collect.chains[1:]]
    assert (await_.verb, await_.host, active.verb) == ("await-serving", "fts102", "set-active")
    # a standby that cannot take its lock: the sessions from the dead host and any left on the
    # backup by an earlier crash are killed, and it is started again
    assert [(s.verb, s.host) for s in await_.fallback] == [
        ("drop-sessions", "fts101"),
        ("drop-sessions", "fts102"),
        ("start", "fts102"),
    ]
    assert sorted(active.channels) == sorted(SITE.agent(a).channel or "" for a in await_.agents)
    # the host is down: the only step naming it goes to the database, not over SSH
    steps = [s for p in plan.phases for c in p.chains for s in c.steps]
    assert {s.verb for s in steps if s.host == "fts101"} == {"drop-sessions"}


def test_a_host_recorded_unreachable_is_never_connected_to_again_in_the_run() -> None:
    import pytest

    from tasks.remote import HostUnreachable, SiteShell

    class NoConnect:
        """The pool must not be asked for the recorded host (a connect would wait its bound)."""

        def __init__(self) -> None:
            self.asked: list[str] = []

        def run(self, ep: object, *a: object, **k: object) -> object:
            self.asked.append(getattr(ep, "host", "?"))
            raise AssertionError("connected")

        run_many = run

        def drop(self, host: str) -> None:
            pass

    pool = NoConnect()
    shell = SiteShell(SITE, pool=pool)  # type: ignore[arg-type]
    shell.mark_unreachable("fts101", "its SSH port did not answer within 0.5 s")
    for call in (
        lambda: shell.run("fts101", "list_processes"),
        lambda: shell.run_argv("fts101", ["true"]),
        lambda: shell.run_many("fts101", [["true"]]),
    ):
        with pytest.raises(HostUnreachable, match=r"did not answer within 0\.5 s"):
            call()
    assert pool.asked == []
    # the other hosts are not affected: their commands go to the pool
    with pytest.raises(AssertionError, match="connected"):
        shell.run("fts102", "list_processes")
    assert pool.asked == ["fts102"]
