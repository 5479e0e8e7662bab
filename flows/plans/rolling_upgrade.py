"""rolling-upgrade's plan: one host after the other (pure).

Per host, in order (or in batches): check that its agents serve and that the hosts holding their
backups answer; install the target version (SPMA); re-render the configuration (YAIM's
configure_node, whose report of changes is kept); restart the agents (their running transfers
continue); verify that each agent serves again with the target version, and read how long it
was down. The plan is derived from what is live: a host that already has the target version
installed and whose every agent runs it is done, so a re-run (or the next window's run)
continues where the last one stopped. A config-only run re-renders and restarts every host it
is given.

A failed host halts the run; the site's `upgrade.on_failure` says what else: ``halt`` (report),
``rollback`` (`plan_rollback`: re-install the version the host had, configure, restart) or
``move`` (the flow moves its agents to their backups with the emergency-move plan).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from config.site import Site
from flows.plans.model import AnyStep, Chain, Phase, Plan, steps_markdown
from flows.plans.snapshot import SiteSnapshot
from flows.plans.verbs import step

PROCEDURE = "rolling-upgrade"


class AgentStatus(BaseModel):
    """A running agent as the host's status command reports it."""

    agent: str
    state: str = ""
    #: the software version it runs and its configuration's digest (when the status says)
    version: str | None = None
    config: str | None = None
    #: seconds it was down at its last restart (when the status says)
    down_s: float | None = None

    @property
    def serving(self) -> bool:
        """Whether it serves: an init script that does not report the state says only that the
        agent runs, which is all that can be asked of it."""
        return self.state in ("", "serving")


class UpgradeHost(BaseModel):
    """What the upgrade needs of one host beside its process snapshot."""

    host: str
    reachable: bool
    error: str | None = None
    #: the installed version (None: unknown or none)
    installed: str | None = None
    agents: list[AgentStatus] = Field(default_factory=list)

    def status(self, agent: str) -> AgentStatus | None:
        """The status line of one agent (None: not running)."""
        return next((a for a in self.agents if a.agent == agent), None)


class UpgradeSnapshot(BaseModel):
    """The site's processes plus each host's installed version and agent status."""

    site: SiteSnapshot
    hosts: dict[str, UpgradeHost]


class UpgradeRequest(BaseModel):
    """What the operator (or the schedule) asked for."""

    #: the version to install (None: config only)
    version: str | None = None
    #: the hosts, in order (empty: every host that runs agents, in site-file order)
    hosts: list[str] = Field(default_factory=list)
    batch: int = 1
    canary: str | None = None


class HostPlan(BaseModel):
    """One host's part of the plan."""

    host: str
    #: the version installed before the run (what a rollback re-installs)
    installed: str | None
    #: the agents expected to serve there (configured, not disabled)
    agents: list[str]
    #: why the host is in the plan, or why it is skipped
    why: str


class UpgradePlan(Plan):
    """The plan of a rolling upgrade: one phase per batch, one chain per host."""

    procedure: str = PROCEDURE
    version: str | None = None
    config_only: bool = False
    #: the hosts to do, in order, with what they have now
    todo: list[HostPlan] = Field(default_factory=list)
    #: hosts already on the target (a re-run continues after them)
    done: list[HostPlan] = Field(default_factory=list)
    canary: str | None = None
    batches: list[list[str]] = Field(default_factory=list)


def parse_installed(text: str, regex: str) -> str | None:
    """The installed version in the output of the profile's `installed_version` command."""
    for line in text.splitlines():
        m = re.search(regex, line.strip())
        if m:
            return m.group(1)
    return None


def parse_status(text: str, regex: str) -> list[AgentStatus]:
    """The running agents in the output of the profile's `agents_status` command."""
    pattern = re.compile(regex)
    out = []
    for line in text.splitlines():
        m = pattern.match(line.strip())
        if not m:
            continue
        g = m.groupdict()
        down = g.get("down")
        out.append(
            AgentStatus(
                agent=g["agent"],
                state=g.get("state") or "",
                version=g.get("version"),
                config=g.get("config"),
                down_s=float(down) if down else None,
            )
        )
    return out


def upgrade_hosts(site: Site) -> list[str]:
    """Every host on which an agent may run (primary or backup), in site-file order: a backup
    must run the new software too when a move starts an agent there."""
    used = {h for a in site.service.agents for h in (a.primary, a.backup)}
    return [h.name for h in site.hosts if h.name in used]


def expected_agents(site: Site, snap: UpgradeSnapshot, host: str) -> list[str]:
    """The agents that should serve on a host: configured there and not in its .disabled."""
    hs = snap.site.host(host) if snap.site.has(host) else None
    disabled = set(hs.disabled) if hs else set()
    return [a.name for a in site.agents_configured_on(host) if a.name not in disabled]


def host_steps(
    site: Site, host: str, agents: list[str], version: str | None, installed: str | None
) -> list[AnyStep]:
    """One host's steps: check, install (when the version differs), configure, restart."""
    backups = sorted(
        {(a.backup if a.primary == host else a.primary) for a in site.agents_configured_on(host)}
    )
    steps = [step(site, f"{host}-check", "check-agents", host, agents, backup_hosts=backups)]
    if version is not None and installed != version:
        steps.append(step(site, f"{host}-install", "install-version", host, version=version))
    steps.append(step(site, f"{host}-configure", "configure-node", host))
    steps.append(step(site, f"{host}-restart", "restart-agents", host, agents, version=version))
    return steps


def plan_rolling_upgrade(site: Site, snap: UpgradeSnapshot, req: UpgradeRequest) -> UpgradePlan:
    """Plan a rolling upgrade from the live state.

    Args:
        site: the site.
        snap: its snapshot.
        req: the version (or config only), the hosts, the batch size, the canary.

    Returns:
        The plan; ``ok=False`` with ``problems`` when a pre-check failed (nothing will change).
    """
    base = dict(
        site=site.site,
        version=req.version,
        config_only=req.version is None,
        canary=req.canary,
    )
    eligible = upgrade_hosts(site)
    problems: list[str] = []
    order = list(dict.fromkeys(req.hosts)) if req.hosts else eligible
    for h in order:
        if h not in eligible:
            problems.append(
                f"{h} is not a host of site {site.site} that runs agents "
                f"(those are: {', '.join(eligible)})"
            )
    if req.canary is not None:
        if req.canary not in order:
            problems.append(f"the canary {req.canary} is not among the hosts to upgrade")
        else:
            order = [req.canary, *[h for h in order if h != req.canary]]
    if req.batch < 1:
        problems.append(f"batch must be at least 1, got {req.batch}")
    if problems:
        return UpgradePlan(**base, ok=False, problems=problems)
    todo: list[HostPlan] = []
    done: list[HostPlan] = []
    for h in order:
        u = snap.hosts.get(h)
        hs = snap.site.host(h) if snap.site.has(h) else None
        if u is None or hs is None or not u.reachable or not hs.reachable:
            why = (u.error if u else None) or (hs.error if hs else None) or "not in the snapshot"
            problems.append(f"{h} cannot be read ({why}); nothing was changed")
            continue
        agents = expected_agents(site, snap, h)
        not_running = [a for a in agents if not hs.runs(a)]
        if not_running:
            problems.append(
                f"{h}: {', '.join(not_running)} should run there and does not; the upgrade "
                "never starts from an unhealthy site: start or move them first"
            )
            continue
        host_plan = HostPlan(host=h, installed=u.installed, agents=agents, why="")
        if req.version is not None and u.installed == req.version:
            behind = [
                a
                for a in agents
                if (st := u.status(a)) is not None and st.version not in (None, req.version)
            ]
            if not behind:
                host_plan.why = f"already runs version {req.version}"
                done.append(host_plan)
                continue
            host_plan.why = (
                f"version {req.version} installed, {len(behind)} agent(s) to restart on it"
            )
        elif req.version is not None:
            host_plan.why = f"version {u.installed or 'unknown'} -> {req.version}"
        else:
            host_plan.why = "configuration re-rendered, agents restarted"
        todo.append(host_plan)
    if problems:
        return UpgradePlan(**base, ok=False, problems=problems, done=done)
    hosts = [host_plan.host for host_plan in todo]
    batches: list[list[str]] = []
    rest = hosts
    if req.canary is not None and req.canary in hosts:
        batches.append([req.canary])
        rest = [h for h in hosts if h != req.canary]
    batches += [rest[i : i + req.batch] for i in range(0, len(rest), req.batch)]
    by_host = {host_plan.host: host_plan for host_plan in todo}
    phases = [
        Phase(
            name=f"batch {i + 1}: " + ", ".join(b),
            chains=[
                Chain(
                    name=h,
                    steps=host_steps(site, h, by_host[h].agents, req.version, by_host[h].installed),
                )
                for h in b
            ],
        )
        for i, b in enumerate(batches)
    ]
    notes = [
        (
            f"upgrade {len(todo)} host(s) to version {req.version}"
            if req.version
            else f"re-render the configuration of {len(todo)} host(s) and restart their agents"
        )
        + (f", {len(done)} already done" if done else "")
        + (f", canary {req.canary} first" if req.canary in hosts else "")
        + (f", {req.batch} at a time" if req.batch > 1 else ", one after the other")
    ]
    if not todo:
        notes = [f"every host already runs version {req.version}: nothing to do"]
    return UpgradePlan(
        **base, ok=True, notes=notes, todo=todo, done=done, batches=batches, phases=phases
    )


def plan_rollback(site: Site, host: str, agents: list[str], version: str) -> Plan:
    """Put a failed host back on the version it had: install it, configure, restart, verify."""
    steps = [
        step(site, f"{host}-rollback-install", "install-version", host, version=version),
        step(site, f"{host}-rollback-configure", "configure-node", host),
        step(site, f"{host}-rollback-restart", "restart-agents", host, agents, version=version),
    ]
    return Plan(
        procedure=PROCEDURE,
        site=site.site,
        ok=True,
        notes=[f"roll {host} back to version {version}"],
        phases=[Phase(name=f"rollback of {host}", chains=[Chain(name=host, steps=steps)])],
    )


def plan_markdown(plan: UpgradePlan) -> str:
    """The plan as markdown (the plan artifact, the approval request, the window notice)."""
    what = f"version {plan.version}" if plan.version else "configuration only"
    out = [f"## Rolling upgrade of {plan.site}: {what}", ""]
    out += [f"- {n}" for n in plan.notes]
    out += [f"- **problem**: {p}" for p in plan.problems]
    if plan.todo:
        out += ["", "| host | now | agents |", "|---|---|---|"]
        out += [f"| {h.host} | {h.why} | {len(h.agents)} |" for h in plan.todo]
    if plan.done:
        out += ["", "Already done: " + ", ".join(f"{h.host} ({h.why})" for h in plan.done)]
    out += steps_markdown(plan)
    return "\n".join(out) + "\n"
