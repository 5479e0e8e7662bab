"""`handover run`'s exit codes and its terminal that may disappear (pure)."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from rich.console import Console

from flows.result import ProcedureResult
from infra.run import _report, _SafeStream

T = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("completed", 0),
        ("dry-run", 0),
        ("partial", 2),
        ("rejected", 3),
        ("failed", 1),
        ("refused", 1),
        ("cancelled", 1),
    ],
)
def test_exit_codes(status: str, code: int) -> None:
    result = ProcedureResult(
        procedure="clean-move",
        site="lab",
        status=status,  # type: ignore[arg-type]
        summary=f"it ended {status}",
        started_at=T,
        ended_at=T,
    )
    out = io.StringIO()
    assert _report(Console(file=out), result, lambda r: r.summary, "", as_json=False) == code


class _Closed(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError("the terminal went away")


def test_a_lost_terminal_drops_output_instead_of_raising() -> None:
    stream = _SafeStream(_Closed())
    assert stream.write("fts101: stopped 1 agent\n") == len("fts101: stopped 1 agent\n")
    assert stream.lost
    stream.flush()
    assert stream.write("more") == 4
