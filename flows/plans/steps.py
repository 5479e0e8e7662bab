"""Building a plan's steps: the exact commands each verb runs, with its pre- and post-condition."""

from __future__ import annotations

from typing import Any

from config.site import Site
from flows.plans.argv import shell_command
from flows.plans.model import CONDITIONS, Step, Verb


def command(site: Site, name: str, **values: str) -> str:
    """One command of the site's profile, filled and quoted, as it will run."""
    return shell_command(site.commands.argv(name, **values))


def commands_for(
    site: Site,
    verb: Verb,
    host: str,
    agents: list[str],
    channels: list[str],
    all_agents: bool = False,
    version: str = "VERSION",
) -> list[str]:
    """The commands a verb runs for these agents or channels (what the plan shows)."""
    if verb in ("set-inactive", "set-active"):
        state = "Inactive" if verb == "set-inactive" else "Active"
        db = site.database
        if db is not None and db.channel_set_statement:
            return [
                f"{db.kind}: {db.channel_set_statement}  # state={state}, channel={c}; else "
                + command(site, "set_channel_state", channel=c, state=state)
                for c in channels
            ]
        return [command(site, "set_channel_state", channel=c, state=state) for c in channels]
    if verb == "wait-drained":
        return [
            shell_command(site.commands.argv("list_processes"))
            + f"  # until no {c}__* process runs"
            for c in channels
        ]
    if verb in ("write-disabled", "clear-disabled"):
        what = "adds " if verb == "write-disabled" else "removes "
        return [
            shell_command(site.commands.disabled_argv("write")) + "  # " + what + ", ".join(agents)
        ]
    if verb == "hand-over":
        kind = site.database.kind if site.database else "database"
        statement = site.database.channel_set_statement if site.database else None
        return [command(site, "stop_agent", agent=a) for a in agents] + [
            f"{kind}: while the stop runs, the sessions of {', '.join(agents)} from {host}; once "
            f"they ended: {statement}  # state=Active, channel={c}"
            for c in channels
        ]
    if verb == "stop":
        if all_agents:
            return [command(site, "stop_all")]
        return [command(site, "stop_agent", agent=a) for a in agents]
    if verb in ("start", "await-serving"):
        return [command(site, "start_agent", agent=a) for a in agents]
    if verb == "start-standby":
        return [
            command(site, "start_agent", agent=a) + "  # not waited for: it waits for the DB lock"
            for a in agents
        ]
    if verb == "await-cutover":
        kind = site.database.kind if site.database else "database"
        return [f"{kind}: database.transfer_eta_query, until {', '.join(channels)} can drain"]
    if verb == "check-agents":
        return [command(site, "agents_status"), command(site, "list_processes")]
    if verb == "install-version":
        return [command(site, "installed_version"), command(site, "upgrade", version=version)]
    if verb == "configure-node":
        return [command(site, "configure")]
    if verb == "restart-agents":
        return [command(site, "restart"), command(site, "agents_status")]
    kind = site.database.kind if site.database else "database"
    if agents:
        return [
            f"{kind}: kill the sessions of {a} from {host}, then check that none is left"
            for a in agents
        ]
    return [f"{kind}: kill every session from {host}, then check that none is left"]


def step(
    site: Site,
    sid: str,
    verb: Verb,
    host: str,
    agents: list[str] | None = None,
    channels: list[str] | None = None,
    *,
    all_agents: bool = False,
    **options: Any,
) -> Step:
    """A step with its commands and conditions (`options`: the `Step` fields for failures)."""
    agents = agents or []
    channels = channels or []
    pre, post = CONDITIONS[verb]
    return Step(
        id=sid,
        verb=verb,
        host=host,
        agents=agents,
        channels=channels,
        commands=commands_for(
            site, verb, host, agents, channels, all_agents, options.get("version") or "VERSION"
        ),
        pre=pre,
        post=post,
        all_agents=all_agents and verb == "stop",
        **options,
    )
