"""What a single field cannot say: references between fields and consistent bounds of a site.

`site_problems(site)` returns every problem at once, each with its field path and its fix; the
site model runs it when a file loads (`Site._invariants`), like Patroni checks
``loop_wait + 2*retry_timeout <= ttl``. One function per part of the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config.site import Site


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a site file: where (a field path), what, and the fix."""

    path: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}; fix: {self.fix}"


class InvariantError(ValueError):
    """Cross-field invariants violated; carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def pol_needs_approvers(site: Site) -> bool:
    """Whether any procedure of the site requires a human approval."""
    return any(p.approval == "required" for p in site.procedures.values())


def site_problems(site: Site) -> list[Problem]:
    """Every cross-field problem of a site, in file order."""
    return [
        *host_problems(site),
        *agent_problems(site),
        *ssh_problems(site),
        *procedure_problems(site),
        *frontend_problems(site),
        *upgrade_problems(site),
        *slack_problems(site),
    ]


def host_problems(site: Site) -> list[Problem]:
    """Hosts: unique names, unique address and port."""
    p: list[Problem] = []
    seen: set[str] = set()
    endpoints: dict[tuple[str, int], str] = {}
    for i, h in enumerate(site.hosts):
        if h.name in seen:
            p.append(Problem(f"hosts[{i}].name", f"host {h.name!r} is defined twice", "rename one"))
        seen.add(h.name)
        ep = (h.address, h.port)
        if ep in endpoints:
            p.append(
                Problem(
                    f"hosts[{i}].address",
                    f"{h.address}:{h.port} is also the address of {endpoints[ep]}",
                    "give each host its own address or port",
                )
            )
        endpoints.setdefault(ep, h.name)
    return p


def frontend_problems(site: Site) -> list[Problem]:
    """The front end: its hosts exist and differ, and the alias it sits behind is declared."""
    fe = site.frontend
    if fe is None:
        return []
    p: list[Problem] = []
    names = {h.name for h in site.hosts}
    known = ", ".join(h.name for h in site.hosts)
    for i, h in enumerate(fe.hosts):
        if h not in names:
            p.append(
                Problem(f"frontend.hosts[{i}]", f"no host {h!r} in hosts", f"use one of: {known}")
            )
        if h in fe.hosts[:i]:
            p.append(Problem(f"frontend.hosts[{i}]", f"{h!r} is listed twice", "list it once"))
    if fe.cluster_host is not None and fe.cluster_host not in names:
        p.append(
            Problem(
                "frontend.cluster_host",
                f"no host {fe.cluster_host!r} in hosts",
                f"use one of: {known}",
            )
        )
    if site.dns is None:
        p.append(
            Problem(
                "frontend",
                "a front end sits behind the service's DNS alias, and the site has no `dns:` "
                "section",
                "add the `dns:` section (alias, zone, primary, TSIG key)",
            )
        )
    return p


def agent_problems(site: Site) -> list[Problem]:
    """Agents: their hosts exist and differ, each agent once."""
    p: list[Problem] = []
    names = {h.name for h in site.hosts}
    known = ", ".join(h.name for h in site.hosts)
    agent_names: dict[str, int] = {}
    for i, a in enumerate(site.service.agents):
        where = f"service.agents[{i}]"
        for side in ("primary", "backup"):
            host = getattr(a, side)
            if host not in names:
                p.append(
                    Problem(
                        f"{where}.{side}",
                        f"host {host!r} is not defined in hosts",
                        f"use one of {known}, or add {host!r} to hosts",
                    )
                )
        if a.primary == a.backup:
            p.append(
                Problem(
                    f"{where}.backup",
                    f"backup host is the primary host ({a.primary})",
                    "name another host as backup",
                )
            )
        if a.name in agent_names:
            p.append(
                Problem(
                    f"{where}.name",
                    f"agent {a.name!r} is also service.agents[{agent_names[a.name]}]",
                    "an agent runs once per site; remove the duplicate",
                )
            )
        agent_names.setdefault(a.name, i)
    return p


def ssh_problems(site: Site) -> list[Problem]:
    """SSH: connecting may not take longer than a whole command may."""
    if site.ssh.connect_timeout_s <= site.ssh.command_timeout_s:
        return []
    return [
        Problem(
            "ssh.connect_timeout_s",
            f"{site.ssh.connect_timeout_s} s is longer than command_timeout_s "
            f"({site.ssh.command_timeout_s} s)",
            "make connect_timeout_s at most command_timeout_s",
        )
    ]


def procedure_problems(site: Site) -> list[Problem]:
    """Procedures: names, polls shorter than timeouts, proceed-on-timeout only in emergencies,
    approvals and drains that fit the maintenance window."""
    p: list[Problem] = []
    for name, pol in site.procedures.items():
        where = f"procedures.{name}"
        if not re.fullmatch(r"^[a-z][a-z0-9-]{0,63}$", name):
            p.append(Problem(where, f"{name!r} is not a procedure name", "use e.g. clean-move"))
        if pol.poll_interval_s >= pol.drain_timeout_s:
            p.append(
                Problem(
                    f"{where}.poll_interval_s",
                    f"poll interval {pol.poll_interval_s} s is not shorter than the drain "
                    f"timeout {pol.drain_timeout_s} s",
                    "poll more often than the timeout",
                )
            )
        if pol.on_approval_timeout == "proceed" and not pol.emergency:
            p.append(
                Problem(
                    f"{where}.on_approval_timeout",
                    "proceed-on-timeout is only allowed for emergency procedures",
                    "use reject, or set emergency: true if this is an emergency procedure",
                )
            )
        for i, win in enumerate(pol.windows):
            w = f"{where}.windows[{i}]"
            if pol.approval == "required" and pol.approval_timeout_s >= win.duration_s:
                p.append(
                    Problem(
                        f"{where}.approval_timeout_s",
                        f"approval may take {pol.approval_timeout_s} s but the window {w} lasts "
                        f"{win.duration_s} s",
                        "shorten approval_timeout_s below the window's duration_s",
                    )
                )
            if pol.expected_host_s > win.duration_s:
                p.append(
                    Problem(
                        f"{where}.expected_host_s",
                        f"one host is expected to take {pol.expected_host_s} s but the window "
                        f"{w} lasts {win.duration_s} s: no host would ever start",
                        "lengthen the window or correct expected_host_s",
                    )
                )
    return p


def upgrade_problems(site: Site) -> list[Problem]:
    """The rolling upgrade's canary is a host that runs agents."""
    canary = site.upgrade.canary
    if canary is None:
        return []
    with_agents = sorted({a.primary for a in site.service.agents})
    if canary not in with_agents:
        return [
            Problem(
                "upgrade.canary",
                f"{canary!r} is not a host whose agents the upgrade restarts",
                f"use one of {', '.join(with_agents)}",
            )
        ]
    return []


def slack_problems(site: Site) -> list[Problem]:
    """Slack: somebody may approve when a procedure requires approval, through the gateway when
    a policy accepts only the gateway's decisions."""
    gated = sorted(n for n, p in site.procedures.items() if p.approval_via == "gateway")
    if gated and site.slack is None:
        return [
            Problem(
                f"procedures.{gated[0]}.approval_via",
                "only the gateway's decisions count, but the site has no slack section (the "
                "gateway seals decisions with the Slack signing secret)",
                "add a slack section (channel, approvers, bot_token, signing_secret), or use "
                "approval_via: any",
            )
        ]
    if (
        site.slack is not None
        and pol_needs_approvers(site)
        and not (site.slack.approvers or site.slack.approver_group)
    ):
        return [
            Problem(
                "slack.approvers",
                "a procedure requires approval but nobody may approve",
                "list Slack user IDs in approvers or set approver_group",
            )
        ]
    return []
