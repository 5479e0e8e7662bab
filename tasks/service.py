"""`handover service`: the start/stop/status procedure of the FTS agents on one host, through
the SSH layer, with OCF's exit codes (`flows.plans.service_status`).

`service_status` reads the host once (snapshot, `agents_status`, `installed_version`) and judges
each agent; `service_start` and `service_stop` are the procedures' own idempotent verbs
(`tasks.agents`) followed by a status read, so that what is reported is what the host says after
the action, not what the action hoped.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from flows.plans.rolling_upgrade import parse_installed
from flows.plans.service_status import (
    OCF_ERR_GENERIC,
    OCF_NOT_RUNNING,
    OCF_SUCCESS,
    AgentVerdict,
    judge_agent,
)
from tasks.adapters.ssh import SshError
from tasks.agents import start_agents, stop_agents
from tasks.outcome import StepFailed
from tasks.remote import SiteShell
from tasks.site_state import snapshot_host


def service_status(
    shell: SiteShell, host: str, agents: list[str] | None = None, *, deep: bool = False
) -> list[AgentVerdict]:
    """Each agent's verdict on `host` (default: every agent the site configures there)."""
    site = shell.site
    names = agents or [a.name for a in site.agents_configured_on(host)]

    def command(name: str) -> tuple[bool, str]:
        try:
            res = shell.run(host, name)
        except SshError as exc:
            return False, str(exc)
        return res.ok or bool(res.stdout.strip()), res.stdout

    with ThreadPoolExecutor(max_workers=3) as ex:
        snap_f = ex.submit(snapshot_host, shell, host)
        status_f = ex.submit(command, "agents_status")
        installed_f = ex.submit(command, "installed_version")
        snap, (_, status_text), (installed_ok, installed_text) = (
            snap_f.result(),
            status_f.result(),
            installed_f.result(),
        )
    installed = (
        parse_installed(installed_text, site.commands.installed_version_regex)
        if installed_ok
        else None
    )
    return [
        judge_agent(site, host, name, snap, status_text, installed, deep=deep) for name in names
    ]


def service_start(
    shell: SiteShell, host: str, agents: list[str]
) -> tuple[int, str, list[AgentVerdict]]:
    """Start agents on `host` (idempotent); (exit code, what the verb said, the verdicts after)."""
    try:
        said = start_agents(shell, host, agents).sentence
    except (StepFailed, SshError) as exc:  # a refusal or a failed start: said, and exit 1
        said = str(exc)
    after = service_status(shell, host, agents)
    ok = all(v.code == OCF_SUCCESS for v in after)
    return (OCF_SUCCESS if ok else OCF_ERR_GENERIC), said, after


def service_stop(
    shell: SiteShell, host: str, agents: list[str]
) -> tuple[int, str, list[AgentVerdict]]:
    """Stop agents on `host` (idempotent); (exit code, what the verb said, the verdicts after).

    An agent that is dead (failed, or died without a stop) gets the init script's stop too,
    which clears its state, so that it ends cleanly stopped (OCF: a stop of a failed resource
    succeeds and leaves it stopped).
    """
    try:
        said = stop_agents(shell, host, agents).sentence
        dead = [v.agent for v in service_status(shell, host, agents) if v.word == "failed"]
        for a in dead:
            shell.run(host, "stop_agent", agent=a)
        if dead:
            said += f"; cleared the state of {len(dead)} dead agent(s): {', '.join(dead)}"
    except (StepFailed, SshError) as exc:  # said, and exit 1
        said = str(exc)
    after = service_status(shell, host, agents)
    ok = all(v.code == OCF_NOT_RUNNING for v in after)
    return (OCF_SUCCESS if ok else OCF_ERR_GENERIC), said, after
