"""`infra.ports.free_port`: its block, and never the same port twice in one process."""

from __future__ import annotations

import socket

import pytest

from infra import ports


def _own_block(n: int) -> range:
    """The last `n` ports of this process's block (`tests/run-groups` gives each group its
    own): ports the other group never takes, and this process's random picks rarely."""
    block = ports.port_range()
    return range(block.stop - n, block.stop)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_ports_come_from_the_processs_block_and_are_never_given_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mine = _own_block(10)
    monkeypatch.setenv(ports.RANGE_ENV, f"{mine.start}-{mine.stop - 1}")
    got = [ports.free_port() for _ in range(5)]
    assert all(p in mine for p in got), got
    assert len(set(got)) == 5, got  # not bound by anyone meanwhile, and still never repeated


def test_a_port_something_listens_on_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        # a pair of ports of this process's block, both free: the first is then taken here
        for taken in _own_block(30)[:-1]:
            if _bindable(taken + 1):
                try:
                    busy.bind(("127.0.0.1", taken))
                    break
                except OSError:
                    continue
        else:
            raise AssertionError("no two free ports in a row at the end of this process's block")
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


def test_a_block_of_ports_is_free_over_tcp_and_udp_and_never_handed_out_again() -> None:
    base = ports.free_port_block(6)
    block = set(range(base, base + 6))
    assert block <= set(ports.port_range())
    # none of the block comes out of free_port (a server of the block that restarts finds its
    # port), and no second block overlaps it
    seen = {ports.free_port() for _ in range(50)}
    assert not seen & block
    other = ports.free_port_block(6)
    assert not set(range(other, other + 6)) & block
