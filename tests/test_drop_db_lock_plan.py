"""drop-db-lock's planner (pure): what it kills, what it refuses, what the check after it finds."""

from __future__ import annotations

import pytest

from config.loader import load_site
from flows.plans.drop_db_lock import (
    DbSessions,
    DropDbLockRequest,
    FoundSession,
    plan_drop_db_lock,
    sessions_left,
)
from flows.plans.verbs import DropSessions
from tests.conftest import LAB_SITE

pytestmark = pytest.mark.unit
AGENT = "glite-transfer-vo-agent-atlas"
FOUND = [
    FoundSession(id="41", machine="fts105", program=AGENT),
    FoundSession(id="42", machine="fts105", program="glite-transfer-vo-agent-cms"),
]


def test_one_step_kills_the_sessions_of_the_machine_or_of_one_agent() -> None:
    site = load_site(LAB_SITE)
    plan = plan_drop_db_lock(site, DbSessions(found=FOUND), DropDbLockRequest(host="fts105"))
    [kill] = plan.steps
    assert plan.ok and isinstance(kill, DropSessions) and kill.agents == []
    assert kill.commands == [
        "postgresql: kill every session from fts105, then check that none is left"
    ]
    one = plan_drop_db_lock(
        site, DbSessions(found=FOUND[:1]), DropDbLockRequest(host="fts105", agent=AGENT)
    )
    assert one.steps[0].agents == [AGENT]


def test_nothing_found_is_nothing_to_do_and_no_database_is_refused() -> None:
    site = load_site(LAB_SITE)
    empty = plan_drop_db_lock(site, DbSessions(found=[]), DropDbLockRequest(host="fts105"))
    assert empty.ok and empty.phases == [] and "nothing to kill" in empty.notes[0]
    bare = plan_drop_db_lock(
        site.model_copy(update={"database": None}),
        DbSessions(found=FOUND),
        DropDbLockRequest(host="fts105"),
    )
    assert not bare.ok and bare.phases == [] and "no database section" in bare.problems[0]


def test_the_check_after_names_only_the_killed_sessions_still_there() -> None:
    plan = plan_drop_db_lock(
        load_site(LAB_SITE), DbSessions(found=FOUND), DropDbLockRequest(host="fts105")
    )
    reconnected = FoundSession(id="77", machine="fts105", program=AGENT)
    assert sessions_left(plan, [reconnected]) == []
    assert sessions_left(plan, [FOUND[1], reconnected]) == [FOUND[1]]
