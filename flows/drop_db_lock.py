"""Flow `drop-db-lock`: find the database sessions that come from a machine (optionally one
agent's), show them, kill them, verify they are gone.

The emergency move uses it when the primary cannot be reached and its agents' sessions hold the
locks the backup's agents wait for.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from flows.run_site import load_run_site
from tasks.db_sessions import DbSession, drop_sessions, find_sessions
from tasks.outcome import StepResult

find_sessions_task = task(  # type: ignore[call-overload]
    find_sessions,
    name="find-db-sessions",
    task_run_name="find-db-sessions-{host}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
)
drop_sessions_task = task(  # type: ignore[call-overload]
    drop_sessions,
    name="drop-db-sessions",
    task_run_name="drop-db-sessions-{host}",
    cache_policy=NO_CACHE,
)


class DropDbLockResult(BaseModel):
    """What was found and what was killed."""

    site: str
    host: str
    agent: str | None
    dry_run: bool
    found: list[DbSession]
    sentence: str
    step: StepResult | None = None


@flow(name="drop-db-lock", persist_result=False)
def drop_db_lock(
    site_file: str, host: str, agent: str | None = None, dry_run: bool = False
) -> DropDbLockResult:
    """Kill the DB sessions from `host` (of `agent` only, when given) and verify they are gone.

    Args:
        site_file: the site file (its `database` section says which database and how to log in).
        host: the machine whose sessions go.
        agent: only the sessions of this agent (its program / application name).
        dry_run: list the sessions and kill nothing.
    """
    logger = get_run_logger()
    site = load_run_site(site_file)
    found = find_sessions_task(site, host, agent)
    create_table_artifact(
        key="drop-db-lock-sessions",
        table=[s.model_dump() for s in found],
        description=f"DB sessions from {host}" + (f" of {agent}" if agent else ""),
    )
    logger.info("%d DB session(s) from %s%s", len(found), host, f" of {agent}" if agent else "")
    if dry_run:
        return DropDbLockResult(
            site=site.site,
            host=host,
            agent=agent,
            dry_run=True,
            found=found,
            sentence=f"dry run: {len(found)} DB session(s) from {host}; nothing killed",
        )
    step = drop_sessions_task(site, host, agent)
    logger.info("%s", step.sentence)
    return DropDbLockResult(
        site=site.site,
        host=host,
        agent=agent,
        dry_run=False,
        found=found,
        sentence=step.sentence,
        step=step,
    )
