"""The lab front end's HA script decides from one status reading (no lab needed)."""

from __future__ import annotations

from typing import Any

from infra.lab.frontend_ha import why_not_serving


def reading(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "host": "fts102",
        "running": True,
        "answers": True,
        "role": "master",
        "epoch": 9,
        "db_epoch": 9,
        "db_holder": "fts102",
        "db_error": None,
    }
    return base | over


def test_a_master_with_the_current_epoch_serves() -> None:
    assert why_not_serving(reading()) is None
    assert why_not_serving(reading(), own_fence_ok=True) is None


def test_a_newer_epoch_from_another_host_is_a_fence() -> None:
    fenced = reading(db_epoch=10, db_holder="fts101")
    assert "fenced" in (why_not_serving(fenced, own_fence_ok=True) or "")
    other_fence = reading(db_epoch=10, db_holder="fenced from fts101")
    assert "fenced" in (why_not_serving(other_fence, own_fence_ok=True) or "")


def test_the_status_check_takes_this_hosts_own_promotion_for_what_it_is() -> None:
    # the switch flow fenced from this host and has not enabled it yet
    fenced_here = reading(db_epoch=10, db_holder="fenced from fts102")
    # `enable 10` claimed the epoch and has not written the role file yet (or the reading saw
    # the role file before the enable and the database after its claim)
    claimed_here = reading(db_epoch=10, db_holder="fts102")
    for state in (fenced_here, claimed_here):
        assert why_not_serving(state, own_fence_ok=True) is None
        # start stays strict: it enables with a newer epoch rather than trust the old one
        assert "fenced" in (why_not_serving(state) or "")


def test_a_slave_or_a_silent_server_does_not_serve() -> None:
    assert why_not_serving(reading(role="slave"), own_fence_ok=True) == "it is a slave"
    assert "does not run" in (why_not_serving(reading(answers=False)) or "")
    unreadable = reading(db_epoch=None, db_error="connection refused")
    assert "connection refused" in (why_not_serving(unreadable) or "")
