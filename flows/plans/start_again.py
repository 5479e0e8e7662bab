"""What a start that cannot take its agents' DB locks does next (pure).

An agent's start on its new host blocks on the agent's DB lock and gives up after the lock wait
while a session still holds it. Once the agent is known to run nowhere else (its stop on the
old host was verified, or the old host is down), a session of it from the old host is stale: a
host cut off from the database, a database that froze, a crash and a reboot all leave one on
the server, and it keeps the lock. So is a session of it from the new host itself, since its
start there failed: that host crashed and rebooted while the agent ran on it (a move's standby,
or its own agent), and its old session outlived the process. The fallback kills the sessions
of those agents from both hosts (`drop-sessions`, scoped to the agents) and starts them again.
"""

from __future__ import annotations

from config.site import Site
from flows.plans.verbs import AnyStep, step


def start_again(
    site: Site, sid: str, old_host: str, target: str, names: list[str]
) -> list[AnyStep]:
    """The fallback steps of a start of `names` on `target` (ids under `sid`): kill their DB
    sessions from `old_host` and from `target` (a session left by a crash), then start them on
    `target` again."""
    return [
        step(site, f"{sid}drop-sessions", "drop-sessions", old_host, names),
        step(site, f"{sid}drop-stale-sessions", "drop-sessions", target, names),
        step(site, f"{sid}start-again", "start", target, names),
    ]
