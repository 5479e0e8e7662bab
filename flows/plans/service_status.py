"""What `handover service status|monitor` says of an agent on a host, with OCF's exit codes (pure).

The agents' start/stop/status procedure as a resource manager needs it: *status* tells a
running agent (0), a cleanly stopped one (7: stopped by the service, or disabled) and a failed
one (1: it failed to start, or died without being stopped) apart; *monitor* asks more of a
running agent: that it serves (holds its lock with a live database session). An agent the site
does not configure on the host is a configuration error (6); software that is not installed, 5;
a host that cannot be asked, 1 (nothing can be said, which a resource manager must treat as a
failure).

Read from what the snapshot path already reads: the host's process table and `.disabled` file
(`HostSnapshot`), the profile's `agents_status` output (`agent_status_regex` for running agents,
`agent_dead_regex` for dead ones) and its `installed_version`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel

from config.site import Site
from flows.plans.rolling_upgrade import parse_status
from flows.plans.snapshot import HostSnapshot

OCF_SUCCESS = 0
OCF_ERR_GENERIC = 1
OCF_ERR_ARGS = 2
OCF_ERR_UNIMPLEMENTED = 3
OCF_ERR_INSTALLED = 5
OCF_ERR_CONFIGURED = 6
OCF_NOT_RUNNING = 7

Word = Literal[
    "running",
    "serving",
    "not-serving",
    "stopped",
    "failed",
    "unknown",
    "not-configured",
    "not-installed",
]


class AgentVerdict(BaseModel):
    """One agent on one host."""

    host: str
    agent: str
    code: int
    word: Word
    why: str
    #: stopped because the host's `.disabled` file lists it (a backup waiting for a move)
    disabled: bool = False

    def sentence(self) -> str:
        """One line for a terminal or a resource manager's log."""
        return f"{self.agent} on {self.host}: {self.word} ({self.why})"


def dead_agents(text: str, regex: str) -> dict[str, str]:
    """The agents the `agents_status` output says are dead, with the reason given."""
    pattern = re.compile(regex)
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = pattern.match(line.strip())
        if m:
            out[m.group("agent")] = (m.groupdict().get("reason") or "").strip()
    return out


def judge_agent(
    site: Site,
    host: str,
    agent: str,
    snap: HostSnapshot,
    status_text: str,
    installed: str | None,
    *,
    deep: bool,
) -> AgentVerdict:
    """An agent's verdict (module docstring); `deep`: monitor (serving), else status (running).

    Args:
        site: the site (which agents each host may run; the command profile).
        host: the host; agent: the agent's name.
        snap: the host's snapshot (an unreachable host gives ``unknown``).
        status_text: the output of the profile's `agents_status` on the host.
        installed: the installed software version (None: not installed, or unreadable).
    """

    def verdict(code: int, word: Word, why: str) -> AgentVerdict:
        return AgentVerdict(host=host, agent=agent, code=code, word=word, why=why)

    if not snap.reachable:
        return verdict(OCF_ERR_GENERIC, "unknown", f"the host cannot be asked: {snap.error}")
    if agent not in {a.name for a in site.agents_configured_on(host)}:
        hosts = [a for a in site.service.agents if a.name == agent]
        where = (
            f"it runs on {hosts[0].primary} (backup {hosts[0].backup})"
            if hosts
            else "the site has no such agent"
        )
        return verdict(OCF_ERR_CONFIGURED, "not-configured", f"not configured on {host}: {where}")
    if installed is None:
        return verdict(
            OCF_ERR_INSTALLED,
            "not-installed",
            f"the agents' software is not installed on {host} "
            f"(`{' '.join(site.commands.installed_version)}`)",
        )
    if snap.runs(agent):
        st = next(
            (
                s
                for s in parse_status(status_text, site.commands.agent_status_regex)
                if s.agent == agent
            ),
            None,
        )
        state = st.state if st is not None else ""
        if not deep:
            return verdict(OCF_SUCCESS, "running", f"version {installed}, {state or 'running'}")
        if state in ("", "serving"):
            return verdict(OCF_SUCCESS, "serving", f"version {installed}")
        return verdict(
            OCF_ERR_GENERIC,
            "not-serving",
            f"its process runs but it is {state}: it holds no lock with a live database session",
        )
    dead = dead_agents(status_text, site.commands.agent_dead_regex)
    if agent in dead:
        return verdict(OCF_ERR_GENERIC, "failed", dead[agent] or "dead")
    if agent in snap.disabled:
        v = verdict(OCF_NOT_RUNNING, "stopped", f"disabled in {site.commands.disabled_file}")
        return v.model_copy(update={"disabled": True})
    return verdict(OCF_NOT_RUNNING, "stopped", "stopped cleanly")


def overall(verdicts: list[AgentVerdict]) -> int:
    """One exit code for several agents: 0 when every one that is not disabled is, 1 when one
    failed or cannot be asked, else the first other code (5, 6, then 7). Disabled agents (a
    host's backups) count only when every one is disabled: then 7."""
    enabled = [v for v in verdicts if not v.disabled]
    codes = [v.code for v in enabled or verdicts]
    if all(c == OCF_SUCCESS for c in codes):
        return OCF_SUCCESS
    if OCF_ERR_GENERIC in codes:
        return OCF_ERR_GENERIC
    for c in (OCF_ERR_INSTALLED, OCF_ERR_CONFIGURED, OCF_NOT_RUNNING):
        if c in codes:
            return c
    return OCF_ERR_GENERIC
