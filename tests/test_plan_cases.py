"""The planners on states recorded from the lab: each case's answer must equal its expected file.

A case is a snapshot (`tests/plan_cases/snapshots`), a procedure and a request; the expected plan
(or compensation) is in `tests/plan_cases/expected`. See `tests/plan_cases/cases.yaml`.
"""

from __future__ import annotations

import difflib

import pytest

from flows.plans.clean_move import MoveRequest, plan_clean_move
from flows.plans.model import Chain, Failure, Ledger
from tests.plan_cases import ROOT, cases, dumps, expected_path, run_case, site, snapshot

CASES = cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_case(name: str) -> None:
    got = dumps(run_case(CASES[name]))
    want = expected_path(name).read_text()
    if got != want:
        diff = "".join(
            difflib.unified_diff(
                want.splitlines(True), got.splitlines(True), "expected", "planner", n=2
            )
        )
        pytest.fail(
            f"{name}: the planner's answer differs from {expected_path(name).name} "
            f"(if the change is meant, run `python -m tests.plan_cases.record`):\n{diff[:6000]}",
            pytrace=False,
        )


def test_there_are_enough_cases_of_every_procedure() -> None:
    by: dict[str, int] = {}
    for case in CASES.values():
        by[case["procedure"]] = by.get(case["procedure"], 0) + 1
    assert sum(by.values()) >= 30, by
    assert all(by.get(p, 0) >= 4 for p in ("clean-move", "emergency-move", "fence-host")), by
    assert by.get("compensation", 0) >= 5, by


def test_every_case_says_what_it_pins() -> None:
    """Each case says in one sentence which facts its expected file pins, for a reviewer who
    checks the expected JSON by reading it (the planner wrote it)."""
    missing = [
        name
        for name, case in CASES.items()
        if not isinstance(case.get("pins"), str) or not case["pins"].strip()
    ]
    assert not missing, f"cases without a `pins` sentence: {missing}"


def _failure(chain: Chain, kind: str) -> Failure:
    return Failure(chain=chain, kind=kind, message=f"{kind}: test")


def _pins_table() -> list[tuple[str, str, str]]:
    """The rows of the table under "What each recorded plan case pins" (what is tested how)."""
    lines = (ROOT / "docs" / "explanations" / "testing.md").read_text().splitlines()
    start = lines.index("## What each recorded plan case pins")
    rows: list[tuple[str, str, str]] = []
    table = False
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            if table:
                break
            continue
        table = True
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"row without 3 cells: {line!r}"
        rows.append((cells[0], cells[1], cells[2]))
    assert rows[:2] == [("case", "procedure", "pins"), ("---", "---", "---")], rows[:2]
    return rows[2:]


def test_the_docs_list_every_case_and_its_pins() -> None:
    want = [(name, case["procedure"], case["pins"]) for name, case in CASES.items()]
    got = _pins_table()
    diff = [f"docs: {g!r}\ncases.yaml: {w!r}" for g, w in zip(got, want, strict=False) if g != w]
    assert got == want, (
        "docs/explanations/testing.md's table of what each plan case pins differs from "
        f"tests/plan_cases/cases.yaml ({len(got)} rows, {len(want)} cases):\n" + "\n".join(diff[:5])
    )


def test_every_expected_file_belongs_to_a_case() -> None:
    stray = {p.stem for p in expected_path("x").parent.glob("*.json")} - set(CASES)
    assert not stray, f"expected files without a case: {sorted(stray)}"


def test_a_plan_step_carries_its_commands_and_conditions() -> None:
    plan = run_case(CASES["steady-full"])
    stop = next(
        s for p in plan["phases"] for c in p["chains"] for s in c["steps"] if s["verb"] == "stop"
    )
    assert stop["commands"] == ["service transfer-agents stop"]
    assert stop["pre"] and "no process of the agents runs" in stop["post"]


def test_compensation_follows_the_ledger_step_by_step() -> None:
    """After each step of one pipelined chain, the remedy for its agent changes as the agent
    goes from the source to the target."""
    from flows.plans.clean_move_compensation import compensate_clean_move

    s = site()
    plan = plan_clean_move(
        s,
        snapshot("steady"),
        MoveRequest(from_host="fts101", to_host="fts102", mode="pipelined"),
    )
    chain = next(c for p in plan.phases for c in p.chains if c.name == "CERN-IN2P3")
    seen: list[tuple[str, str]] = []
    for st in ["all/set-inactive", *(x.id for x in chain.steps)]:
        [r] = compensate_clean_move(s, plan, Ledger.after(plan, st), _failure(chain, "E"))
        seen.append((st.split("/")[-1], r.result))
    assert seen == [
        ("set-inactive", "left-on-source"),
        ("wait-drained", "left-on-source"),
        ("write-disabled", "left-on-source"),
        ("stop", "rolled-back"),
        ("clear-disabled", "rolled-back"),
        ("start", "moved"),
        ("set-active", "moved"),
    ]
    last = compensate_clean_move(
        s, plan, Ledger.after(plan, "CERN-IN2P3/set-active"), _failure(chain, "E")
    )
    assert last[0].steps == []  # already Active on the target: nothing to undo


def test_compensation_after_each_step_of_a_hand_over_chain() -> None:
    """With hot standby and the hand-over (the database sees the lock released): before the
    hand-over the agent stays on the source and its standby is stopped; a hand-over that
    failed after its stop (`stopped_agents`) leaves the agent to its standby with the channel
    set Active; after it, the standby's await is all that is left."""
    from flows.plans.clean_move_compensation import compensate_clean_move

    s = site()
    assert s.database is not None
    s = s.model_copy(
        update={
            "database": s.database.model_copy(
                update={
                    "channel_states_query": "SELECT name, state FROM channels",
                    "channel_set_statement": "UPDATE channels SET state = :state "
                    "WHERE name = :channel",
                }
            )
        }
    )
    plan = plan_clean_move(
        s,
        snapshot("steady"),
        MoveRequest(from_host="fts101", to_host="fts102", mode="pipelined", hot_standby=True),
    )
    chain = next(c for p in plan.phases for c in p.chains if c.name == "CERN-IN2P3")
    ids = {x.verb: x.id for x in chain.steps}
    assert "stop" not in ids and "set-active" not in ids
    verbs = [x.verb for x in chain.steps]
    before = chain.steps[verbs.index("hand-over") - 1].id  # the standby is launched by then

    def remedy(ledger: Ledger) -> tuple[str, list[str]]:
        [r] = compensate_clean_move(s, plan, ledger, _failure(chain, "E"))
        return r.result, [f"{x.verb}@{x.host}" for x in r.steps]

    # the hand-over failed with its stop refused: the standby goes, the agent stays
    assert remedy(Ledger.after(plan, before)) == (
        "left-on-source",
        ["stop@fts102", "write-disabled@fts102", "set-active@fts101", "clear-disabled@fts101"],
    )
    # its stop worked, then the channel could not be set: the standby keeps the agent
    partly = Ledger.after(plan, before)
    hand_over = next(x for x in chain.steps if x.verb == "hand-over")
    failure = RuntimeError("CERN-IN2P3 could not be set Active")
    failure.stopped_agents = hand_over.agents  # type: ignore[attr-defined]
    hand_over.partly_done(partly, failure)
    assert f"{hand_over.id}#stop" in partly.done and hand_over.agents[0] in partly.stopped
    assert remedy(partly) == ("moved", ["await-serving@fts102", "set-active@fts101"])
    # done: stopped and Active; only the standby's await can fail after it
    done = Ledger.after(plan, ids["hand-over"])
    assert hand_over.agents[0] in done.stopped and "CERN-IN2P3" in done.active
    result, steps = remedy(done)
    assert result == "rolled-back" and steps[0] == "stop@fts102"


def test_an_agent_whose_stop_was_cut_off_keeps_its_channel_inactive() -> None:
    """The source stopped answering while an agent's stop ran (a frozen host finishes the stop
    when it thaws): setting its channel Active would hand it transfers that the stop then loses,
    so the remedy leaves the channel Inactive and says to re-run the move."""
    from flows.plans.clean_move_compensation import compensate_clean_move

    s = site()
    plan = plan_clean_move(
        s,
        snapshot("steady"),
        MoveRequest(from_host="fts101", to_host="fts102", mode="pipelined"),
    )
    chain = next(c for p in plan.phases for c in p.chains if c.name == "CERN-IN2P3")
    stop = next(x for x in chain.steps if x.verb == "stop")
    ledger = Ledger.after(plan, next(x.id for x in chain.steps if x.verb == "write-disabled"))
    ledger.record_in_doubt(stop)
    [r] = compensate_clean_move(s, plan, ledger, _failure(chain, "TransientSshError"))
    assert r.result == "in-doubt" and r.steps == []
    assert r.human and "CERN-IN2P3 stays Inactive" in r.human[0]
    assert "run the move again" in r.human[0]
    # a stop that answered (and failed its post-condition) is not in doubt: the channel goes
    # Active again with the agent left on the source
    [known] = compensate_clean_move(
        s,
        plan,
        Ledger.after(plan, stop.id.replace("stop", "write-disabled")),
        _failure(chain, "StepFailed"),
    )
    assert known.result == "left-on-source"
    assert [x.verb for x in known.steps] == ["set-active", "clear-disabled"]
