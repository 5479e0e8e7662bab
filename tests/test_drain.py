"""The drain wait (pure: a scripted shell stands in for SSH): a channel counts as drained only
when no transfer runs and the database answers from the host, so that the agent can record the
results of the transfers that ended before it is stopped."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from config.loader import load_site
from flows.executor import context_thread
from tasks.adapters.ssh import CommandResult
from tasks.drain import DrainMonitor, DrainTimeout, HostLost

SITE = load_site(Path(__file__).resolve().parent.parent / "config/sites/lab.yaml")
AGENT = "glite-transfer-channel-agent-urlcopy-CERN-RAL"


class ScriptedShell:
    """`ps` shows the agent and `transfers` transfer processes of CERN-RAL; the channel-state
    command works while `db_answers`."""

    def __init__(self) -> None:
        self.site = SITE
        self.transfers = 1
        self.db_answers = True
        self.state_reads = 0

    def _result(self, command: str, code: int, out: str, err: str = "") -> CommandResult:
        return CommandResult(
            host="fts101", command=command, exit_code=code, stdout=out, stderr=err, duration_s=0
        )

    def run(self, host: str, command: str, **values: Any) -> CommandResult:
        if command == "list_processes":
            lines = [f"100 edguser {AGENT}"]
            lines += [f"{200 + i} edguser CERN-RAL__job{i}" for i in range(self.transfers)]
            return self._result("ps", 0, "\n".join(lines) + "\n")
        assert command == "channel_state", command
        self.state_reads += 1
        if self.db_answers:
            return self._result("glite-transfer-channel-list", 0, "State: Inactive\n")
        return self._result("glite-transfer-channel-list", 1, "", "cannot reach the database")

    def run_argv(self, host: str, argv: list[str], **kw: Any) -> CommandResult:
        return self._result("cat .disabled", 0, "")

    def run_many(self, host: str, commands: list[Any], **kw: Any) -> list[CommandResult]:
        """As `SiteShell.run_many`: each a profile command with its values, or an argv."""
        return [
            self.run_argv(host, c) if isinstance(c, list) else self.run(host, c[0], **c[1])
            for c in commands
        ]


def _monitor(shell: ScriptedShell) -> DrainMonitor:
    return DrainMonitor(shell, "fts101", ["CERN-RAL"], 0.01, threading.Event())  # type: ignore[arg-type]


def test_drained_once_no_transfer_runs_and_the_database_answers() -> None:
    shell = ScriptedShell()
    mon = _monitor(shell)
    mon.poll_once()
    assert shell.state_reads == 0  # a transfer runs: no need to ask the database
    shell.transfers = 0
    mon.poll_once()
    assert shell.state_reads == 1
    assert mon.wait(["CERN-RAL"], since=0.0, timeout_s=1) == {"CERN-RAL": 0}


def test_no_transfer_but_a_silent_database_is_not_drained() -> None:
    shell = ScriptedShell()
    shell.transfers, shell.db_answers = 0, False
    mon = _monitor(shell)
    mon.poll_once()
    with pytest.raises(DrainTimeout) as info:
        mon.wait(["CERN-RAL"], since=0.0, timeout_s=0.2)
    assert "the database did not answer" in str(info.value)
    shell.db_answers = True  # it answers again: now the channel is drained
    mon.poll_once()
    assert mon.wait(["CERN-RAL"], since=0.0, timeout_s=1) == {"CERN-RAL": 0}


class DeadShell(ScriptedShell):
    """sshd gone: every command is refused."""

    def run(self, host: str, command: str, **values: Any) -> CommandResult:
        from tasks.adapters.ssh import TransientSshError

        raise TransientSshError(f"{host} (127.0.0.1:2222): connection refused", host=host)

    def run_argv(self, host: str, argv: list[str], **kw: Any) -> CommandResult:
        return self.run(host, "x")


def test_a_host_lost_for_the_bound_ends_the_wait_long_before_the_drain_timeout() -> None:
    import time

    mon = DrainMonitor(
        DeadShell(),  # type: ignore[arg-type]
        "fts101",
        ["CERN-RAL"],
        0.05,
        threading.Event(),
        lost_after_s=0.3,
    )
    mon.start()
    started = time.monotonic()
    try:
        with pytest.raises(HostLost) as info:
            mon.wait(["CERN-RAL"], since=time.monotonic(), timeout_s=60)
    finally:
        mon.stop()
    assert time.monotonic() - started < 5  # not the 60 s drain timeout
    assert "fts101 could not be reached" in str(info.value)
    assert "connection refused" in str(info.value)


def test_a_database_answer_older_than_its_freshness_is_asked_again() -> None:
    import time

    shell = ScriptedShell()
    shell.transfers = 0
    # freshness 1 s: two polls in a row fall within it even on a loaded machine
    mon = DrainMonitor(shell, "fts101", ["CERN-RAL"], 0.01, threading.Event(), db_fresh_s=1.0)  # type: ignore[arg-type]
    mon.poll_once()
    assert shell.state_reads == 1
    mon.poll_once()  # still fresh: not asked again
    assert shell.state_reads == 1
    time.sleep(1.1)
    mon.poll_once()
    assert shell.state_reads == 2
    shell.db_answers = False
    time.sleep(1.1)
    mon.poll_once()  # the last answer failed: not drained, even though one worked before
    with pytest.raises(DrainTimeout, match="the database did not answer"):
        mon.wait(["CERN-RAL"], since=0.0, timeout_s=0.05)


def test_while_a_waiter_waits_the_database_is_asked_ahead_of_the_drain() -> None:
    """The check runs in its own thread while the channel still drains: the poll that sees
    the last transfer gone finds a fresh answer and does not ask the database itself."""
    import time

    shell = ScriptedShell()
    mon = DrainMonitor(shell, "fts101", ["CERN-RAL"], 0.01, threading.Event(), db_fresh_s=30)  # type: ignore[arg-type]
    mon.start(context_thread)  # as the executor starts it: both threads must run
    got: list[dict[str, int]] = []
    waiter = threading.Thread(
        target=lambda: got.append(mon.wait(["CERN-RAL"], since=time.monotonic(), timeout_s=30))
    )
    try:
        waiter.start()
        deadline = time.monotonic() + 10
        while shell.state_reads == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert shell.state_reads == 1  # asked while a transfer still runs
        assert not got
        shell.transfers = 0
        waiter.join(timeout=10)
        assert got == [{"CERN-RAL": 0}]
        assert shell.state_reads == 1  # the drained poll used that answer
    finally:
        mon.stop()


def test_a_poll_begins_when_a_transfer_is_expected_to_end() -> None:
    """`expect`: besides every `poll_s`, a poll begins at each moment a transfer is expected to
    end, also when the moments come while the monitor sleeps out its period."""
    shell = ScriptedShell()
    polls: list[float] = []  # when each poll began
    real_run = shell.run

    def run(host: str, command: str, **values: Any) -> CommandResult:
        if command == "list_processes":
            polls.append(time.monotonic())
        return real_run(host, command, **values)

    shell.run = run  # type: ignore[method-assign]
    # a period far longer than the test: any poll after the first is one `expect` asked for
    mon = DrainMonitor(shell, "fts101", ["CERN-RAL"], 600.0, threading.Event())  # type: ignore[arg-type]
    mon.start()
    try:
        wait_until = time.monotonic() + 30
        while not polls and time.monotonic() < wait_until:
            time.sleep(0.01)
        assert len(polls) == 1, polls
        moments = [time.monotonic() + 0.3, time.monotonic() + 0.6]
        mon.expect(moments)  # the monitor sleeps until its period's end
        while len(polls) < 3 and time.monotonic() < wait_until:
            time.sleep(0.01)
        assert len(polls) == 3, polls
        assert polls[1] >= moments[0] and polls[2] >= moments[1], (polls, moments)
    finally:
        mon.stop()


def test_a_progress_report_that_fails_does_not_stop_the_polling() -> None:
    """The flow's progress callback calls the Prefect API; an API that fails (a server process
    lost, Redis restarting) made the polling thread die with it, and the wait then timed out on
    the last counts though the channel had drained."""
    shell = ScriptedShell()
    reports: list[dict[str, int]] = []

    def report(running: dict[str, int]) -> None:
        reports.append(running)
        raise RuntimeError("500 Internal Server Error")

    mon = DrainMonitor(
        shell,  # type: ignore[arg-type]
        "fts101",
        ["CERN-RAL"],
        0.01,
        threading.Event(),
        on_poll=report,
    )
    mon.start()
    try:
        time.sleep(0.1)
        shell.transfers = 0
        assert mon.wait(["CERN-RAL"], since=time.monotonic(), timeout_s=5) == {"CERN-RAL": 0}
    finally:
        mon.stop()
    assert len(reports) > 1
