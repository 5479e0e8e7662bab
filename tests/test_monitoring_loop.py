"""The whole loop of seed 002's monitoring on real servers: the lab's host crashes, handover's
exporter sees it, Debian's Prometheus fires the shipped rule, Debian's Alertmanager sends it to
the gateway, and exactly one emergency move runs and moves the host's agents, with nothing typed;
the host was also the front end's master, so the switch moves the alias away from it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.alert_stack import (
    AM_TOKEN,
    Stack,
    alias_host,
    emergency_runs,
    final,
    stack_fixture,
    switch_runs,
)
from tests.conftest import (
    RunningLab,
    forget_automatic_switches,
    require,
    start_lab,
    stays,
    wait_for,
)

HOST, BACKUP = "fts101", "fts102"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    from infra.lab.monitoring import missing

    require(not missing(), "; ".join(missing()))
    yield from start_lab(tmp_path_factory, monitoring=True)


@pytest.fixture(scope="module")
def stack(
    lab: RunningLab, prefect_api: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    yield from stack_fixture(lab, prefect_api, tmp_path_factory)


def test_a_crashed_host_starts_one_emergency_move_with_nothing_typed(
    lab: RunningLab, stack: Stack, tmp_path: Path
) -> None:
    token = tmp_path / "am.token"
    token.write_text(AM_TOKEN)
    lab.lab.monitoring_to(stack.url, token)
    forget_automatic_switches(lab)
    assert alias_host(lab) == HOST
    moved = [a.name for a in lab.site.agents_on(HOST)]
    since = dt.datetime.now(dt.UTC)

    def runs() -> list[object]:
        return [r for r in emergency_runs(HOST) if r.created and r.created >= since]

    lab.lab.fault(HOST, "crash")
    try:
        [run] = wait_for(runs, 120, f"an emergency move of {HOST} from Alertmanager's alert")
        done = wait_for(lambda: final(run.id), 240, "the emergency move to end")
        assert done.state is not None and done.state.is_completed(), done.state
        serving = lab.lab.serving(lab.site, lab.lab.record())
        assert all(serving.get(a) == {BACKUP} for a in moved), serving
        stays(lambda: len(runs()) == 1, 10, "one emergency move")
        assert stack.gateway_lines('"source": "alertmanager"', '"result": "new"', HOST)
        # the master's front end went down with its host: the switch moved the alias
        [switched] = wait_for(lambda: switch_runs(HOST, since), 60, "the switch run")
        wait_for(lambda: final(switched.id), 180, "the switch to end")
        assert alias_host(lab) == BACKUP
    finally:
        lab.lab.heal(HOST)


def test_a_killed_front_end_starts_one_switch_and_no_move(lab: RunningLab, stack: Stack) -> None:
    """The host lives on; only its front end, the master, dies: the alias moves, nothing else."""
    forget_automatic_switches(lab)
    master = alias_host(lab)
    other = HOST if master == BACKUP else BACKUP
    since = dt.datetime.now(dt.UTC)
    lab.lab.fault(master, "frontend-down")
    try:
        [run] = wait_for(lambda: switch_runs(master, since), 120, "the switch from the alert")
        done = wait_for(lambda: final(run.id), 180, "the switch to end")
        assert done.state is not None and done.state.is_completed(), done.state
        assert alias_host(lab) == other
        assert stack.gateway_lines('"source": "alertmanager"', '"kind": "frontend_down"', master)
        stays(
            lambda: (
                len(switch_runs(master, since)) == 1
                and not [r for r in emergency_runs(master) if r.created and r.created >= since]
            ),
            10,
            "one switch and no emergency move",
        )
    finally:
        lab.lab.heal(master)
