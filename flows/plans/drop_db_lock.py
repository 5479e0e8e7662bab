"""drop-db-lock's plan: the DB sessions from a machine (or one agent's) to kill (pure).

A crashed or cut-off host's agents keep their sessions open on the database server, and with
them the locks their backups' agents wait for. The plan names the sessions found and one step
that kills them and checks that none of them is left; a session the machine opens afterwards
(an agent that reconnects) is a new one, named in the report, not killed in a loop.
"""

from __future__ import annotations

from pydantic import BaseModel

from config.site import Site
from flows.plans.model import Chain, Phase, Plan
from flows.plans.verbs import step

PROCEDURE = "drop-db-lock"


class FoundSession(BaseModel):
    """A DB session the listing found (what the plan shows of it)."""

    id: str
    machine: str
    program: str


class DropDbLockPlan(Plan):
    """The plan of drop-db-lock."""

    procedure: str = PROCEDURE
    host: str
    agent: str | None = None
    found: list[FoundSession]


class DbSessions(BaseModel):
    """What drop-db-lock plans from: the DB sessions listed from the machine just now."""

    found: list[FoundSession]


class DropDbLockRequest(BaseModel):
    """What drop-db-lock is asked: the machine whose sessions go, or only one agent's there."""

    host: str
    agent: str | None = None


def plan_drop_db_lock(site: Site, snap: DbSessions, req: DropDbLockRequest) -> DropDbLockPlan:
    """Plan drop-db-lock: kill the sessions found from `req.host` (of `req.agent` only, if set).

    Args:
        site: the site (it must declare its database).
        snap: the sessions listed from the machine just now.
        req: the machine, and the one agent when only its sessions go.
    """
    host, agent, found = req.host, req.agent, snap.found
    base = dict(site=site.site, host=host, agent=agent, found=found)
    if site.database is None:
        return DropDbLockPlan(
            **base,
            ok=False,
            problems=[f"site {site.site} has no database section: there is no session to kill"],
        )
    whose = f" of {agent}" if agent else ""
    if not found:
        return DropDbLockPlan(
            **base, ok=True, notes=[f"no DB session from {host}{whose}: nothing to kill"]
        )
    kill = step(site, f"{host}/drop-sessions", "drop-sessions", host, [agent] if agent else [])
    return DropDbLockPlan(
        **base,
        ok=True,
        phases=[
            Phase(name=f"kill the sessions from {host}", chains=[Chain(name=host, steps=[kill])])
        ],
    )


def sessions_left(plan: DropDbLockPlan, after: list[FoundSession]) -> list[FoundSession]:
    """The sessions the plan killed that a listing after the run still shows (pure)."""
    now = {s.id for s in after}
    return [s for s in plan.found if s.id in now]
