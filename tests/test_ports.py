"""`infra.ports.free_port`: its block, and never the same port twice in one process."""

from __future__ import annotations

import socket

import pytest

from infra import ports


def test_ports_come_from_the_processs_block_and_are_never_given_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ports.RANGE_ENV, "28990-28999")
    got = [ports.free_port() for _ in range(5)]
    assert all(28990 <= p <= 28999 for p in got), got
    assert len(set(got)) == 5, got  # not bound by anyone meanwhile, and still never repeated


def test_a_port_something_listens_on_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        for taken in range(28980, 28989):
            try:
                busy.bind(("127.0.0.1", taken))
                break
            except OSError:
                continue
        busy.listen()
        monkeypatch.setenv(ports.RANGE_ENV, f"{taken}-{taken + 1}")
        assert ports.free_port() == taken + 1


@pytest.mark.parametrize("bad", ["27000", "29999-27000", "1000-2000", "24000-30000", "a-b"])
def test_a_malformed_block_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv(ports.RANGE_ENV, bad)
    with pytest.raises(ValueError, match=ports.RANGE_ENV):
        ports.free_port()
