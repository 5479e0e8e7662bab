"""Procedures asked about a host the site does not have refuse at once, naming the hosts it has
(a real Prefect server; nothing reaches a host)."""

from __future__ import annotations

from flows.clean_move import CleanMoveResult, clean_move
from flows.drop_db_lock import DropDbLockResult, drop_db_lock
from flows.emergency_move import EmergencyResult, emergency_move
from flows.fence_host import fence_host
from tests.conftest import LAB_SITE


def test_an_unknown_host_is_refused_by_every_procedure(prefect_api: str) -> None:
    em = emergency_move(str(LAB_SITE), "fts199", return_state=True)
    result = em.result(raise_on_failure=False)
    assert isinstance(result, EmergencyResult), result
    assert result.status == "refused" and "no host 'fts199' in site lab" in result.summary
    assert "fts101, fts102" in result.summary
    fence = fence_host(str(LAB_SITE), "fts199", return_state=True)
    assert fence.is_failed() and "no host 'fts199'" in (fence.message or "")
    cm = clean_move(str(LAB_SITE), "fts101", "fts199", dry_run=True, return_state=True).result(
        raise_on_failure=False
    )
    assert isinstance(cm, CleanMoveResult) and cm.status == "refused", cm
    assert "host fts199 is not in site lab" in cm.summary
    drop = drop_db_lock(str(LAB_SITE), "fts199", return_state=True).result(raise_on_failure=False)
    assert isinstance(drop, DropDbLockResult) and drop.status == "refused", drop
    assert "no host 'fts199' in site lab" in drop.summary and "nothing changed" in drop.summary
