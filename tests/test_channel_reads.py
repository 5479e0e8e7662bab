"""Where the channel verb reads states (pure: a scripted shell and database stand in): from the
site's database query when it answers, with the channel tool on the host for what it did not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config.loader import load_site
from tasks import channels as ch
from tasks.adapters.ssh import CommandResult

SITE = load_site(Path(__file__).resolve().parent.parent / "config/sites/lab.yaml")


class ToolShell:
    """The channel tool on a host: every channel reads `state`; the reads are counted."""

    def __init__(self, state: str) -> None:
        self.site = SITE
        self.state = state
        self.reads: list[str] = []

    def run(self, host: str, command: str, **values: Any) -> CommandResult:
        assert command == "channel_state", command
        self.reads.append(values["channel"])
        return CommandResult(
            host=host,
            command=command,
            exit_code=0,
            stdout=f"State: {self.state}\n",
            stderr="",
            duration_s=0,
        )


def test_states_the_database_answered_are_not_read_on_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ch, "channel_states_from_db", lambda site: {"CERN-RAL": "Inactive"})
    shell = ToolShell("Active")
    got = ch.read_states(shell, "fts101", ["CERN-RAL", "CERN-CERN"])  # type: ignore[arg-type]
    assert got == {"CERN-RAL": "Inactive", "CERN-CERN": "Active"}
    assert shell.reads == ["CERN-CERN"]  # only what the query did not answer


def test_without_the_database_every_state_is_read_with_the_tool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # no query configured, or the database did not answer: `channel_states_from_db` gives {}
    monkeypatch.setattr(ch, "channel_states_from_db", lambda site: {})
    shell = ToolShell("Inactive")
    got = ch.read_states(shell, "fts101", ["CERN-RAL", "CERN-CERN"])  # type: ignore[arg-type]
    assert got == {"CERN-RAL": "Inactive", "CERN-CERN": "Inactive"}
    assert sorted(shell.reads) == ["CERN-CERN", "CERN-RAL"]
