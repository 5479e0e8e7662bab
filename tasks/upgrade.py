"""Verbs of the rolling upgrade: idempotent, verified, each with an outcome sentence.

* `check_agents`: each agent of the host serves, and the hosts of their backups answer SSH.
* `install_version`: the version is installed (SPMA runs only when another one is).
* `configure_node`: YAIM re-renders the configuration; its report of changes is kept.
* `restart_agents`: ``service transfer-agents restart``; then each agent serves again (with the
  version, when one is asked), and each one's time down is read from the status (or bounded by
  the restart's duration when the init script does not report it).

`read_upgrade_host` is the snapshot reader: the installed version and each running agent's status.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from flows.plans.rolling_upgrade import AgentStatus, UpgradeHost, parse_installed, parse_status
from flows.plans.words import count
from tasks.adapters.ssh import CommandResult, SshError
from tasks.agents import START_TIMEOUT_S, read_status
from tasks.outcome import StepFailed, StepResult, listing, now
from tasks.remote import SiteShell
from tasks.site_state import snapshot_host

#: how long an install (SPMA) or a configuration (YAIM) may take
INSTALL_TIMEOUT_S = 600.0


def _tail(res: CommandResult, n: int = 400) -> str:
    text = (res.stdout + res.stderr).strip()
    return text[-n:] if text else "no output"


def read_upgrade_host(shell: SiteShell, host: str) -> UpgradeHost:
    """The installed version and the running agents' status of one host (an SSH failure gives
    ``reachable=False`` with the error)."""
    c = shell.site.commands
    try:
        installed = shell.run(host, "installed_version")
        status = shell.run(host, "agents_status")
    except SshError as exc:
        return UpgradeHost(host=host, reachable=False, error=str(exc))
    return UpgradeHost(
        host=host,
        reachable=True,
        installed=parse_installed(installed.stdout, c.installed_version_regex)
        if installed.ok
        else None,
        agents=parse_status(status.stdout, c.agent_status_regex),
    )


def _serving(st: AgentStatus | None) -> bool:
    return st is not None and st.serving


def check_agents(shell: SiteShell, host: str, agents: list[str], others: list[str]) -> StepResult:
    """Pre-check: each agent serves on the host, and every host in `others` answers SSH."""
    verb = "check-agents"
    started = now()
    with ThreadPoolExecutor(max_workers=1 + min(8, len(others) or 1)) as ex:
        status = ex.submit(read_status, shell, host)
        peers = list(ex.map(lambda h: snapshot_host(shell, h), others))
        statuses, command = status.result()
    by_name = {s.agent: s for s in statuses}
    sick = [a for a in agents if not _serving(by_name.get(a))]
    down = [p for p in peers if not p.reachable]
    problems = []
    if sick:
        what = [f"{a} ({by_name[a].state if a in by_name else 'not running'})" for a in sick]
        problems.append(
            f"{', '.join(what)} {'does' if len(sick) == 1 else 'do'} not serve on {host}"
        )
    if down:
        problems.append(
            "the hosts of its agents' backups do not answer: "
            + "; ".join(f"{p.host}: {p.error}" for p in down)
        )
    if problems:
        raise StepFailed(
            f"{host}: pre-check failed: {'; '.join(problems)}; nothing was changed on {host}; "
            "fix the site, then run the upgrade again (it continues where it stopped)",
            host=host,
            verb=verb,
        )
    return StepResult(
        host=host,
        verb=verb,
        unchanged=agents,
        sentence=f"{host}: {count(len(agents), 'agent')} serving"
        + (f", {', '.join(others)} answering" if others else ""),
        commands=[command],
        started_at=started,
        ended_at=now(),
    )


def installed_version(shell: SiteShell, host: str) -> str | None:
    """The installed version (None: the command found none).

    Raises:
        SshError: the host could not be reached.
    """
    res = shell.run(host, "installed_version")
    return parse_installed(res.stdout, shell.site.commands.installed_version_regex)


def install_version(shell: SiteShell, host: str, version: str) -> StepResult:
    """Install `version` (SPMA) unless it is installed; verified by reading it back."""
    verb = "install-version"
    started = now()
    before = installed_version(shell, host)
    commands = []
    report: list[str] = []
    if before != version:
        res = shell.run(host, "upgrade", version=version, timeout=INSTALL_TIMEOUT_S)
        commands.append(res.command)
        report = [ln.strip() for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        if not res.ok:
            raise StepFailed(
                f"{host}: `{res.command}` exited {res.exit_code}: {_tail(res)}; version "
                f"{before or 'unknown'} is still installed",
                host=host,
                verb=verb,
            )
        after = installed_version(shell, host)
        if after != version:
            raise StepFailed(
                f"{host}: `{res.command}` succeeded but version {after or 'unknown'} is "
                f"installed, not {version}: {_tail(res)}",
                host=host,
                verb=verb,
            )
    sentence = (
        f"{host}: version {before or 'unknown'} -> {version} installed"
        if before != version
        else f"{host}: version {version} was already installed"
    )
    return StepResult(
        host=host,
        verb=verb,
        changed=[version] if before != version else [],
        sentence=sentence,
        commands=commands,
        report=report,
        started_at=started,
        ended_at=now(),
    )


def configure_node(shell: SiteShell, host: str) -> StepResult:
    """Re-render the agents' configuration (YAIM); its report of changes is kept."""
    verb = "configure-node"
    started = now()
    res = shell.run(host, "configure", timeout=INSTALL_TIMEOUT_S)
    lines = [ln.strip() for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    if not res.ok:
        raise StepFailed(
            f"{host}: `{res.command}` exited {res.exit_code}: {_tail(res)}; the agents still "
            "run with their previous configuration",
            host=host,
            verb=verb,
        )
    # YAIM names each changed file; its header and summary lines are not changes
    changes = [
        ln for ln in lines if ": " in ln and not ln.startswith(("Configuring", "configure_node:"))
    ]
    return StepResult(
        host=host,
        verb=verb,
        changed=changes,
        sentence=f"{host}: configuration rendered, "
        + (f"{count(len(changes), 'change')} reported" if changes else "no change reported"),
        commands=[res.command],
        report=lines,
        started_at=started,
        ended_at=now(),
    )


def restart_agents(
    shell: SiteShell, host: str, agents: list[str], version: str | None
) -> StepResult:
    """Restart the host's agents; each must serve again (on `version`, when given).

    Each agent's time down is what the status reports for its last restart, or, when the init
    script does not say, the restart command's duration (an upper bound).
    """
    verb = "restart-agents"
    started = now()
    t0 = time.monotonic()
    res = shell.run(host, "restart", timeout=START_TIMEOUT_S)
    took = time.monotonic() - t0
    statuses, status_cmd = read_status(shell, host)
    by_name = {s.agent: s for s in statuses}
    installed = None
    if version is not None and any(
        by_name.get(a, AgentStatus(agent=a)).version is None for a in agents
    ):
        installed = installed_version(shell, host)
    failed = []
    measures: dict[str, float] = {}
    for a in agents:
        st = by_name.get(a)
        if not _serving(st):
            failed.append(f"{a} ({st.state if st else 'not running'})")
            continue
        assert st is not None
        runs = st.version if st.version is not None else installed
        if version is not None and runs != version:
            failed.append(f"{a} (runs version {runs or 'unknown'}, not {version})")
            continue
        measures[a] = st.down_s if st.down_s is not None else round(took, 3)
    if failed:
        raise StepFailed(
            f"{host}: after `{res.command}` (exit {res.exit_code}), "
            f"{count(len(failed), 'agent')} {'does' if len(failed) == 1 else 'do'} not serve: "
            f"{'; '.join(failed)}; output: {_tail(res)}",
            host=host,
            verb=verb,
        )
    worst = max(measures.values(), default=0.0)
    return StepResult(
        host=host,
        verb=verb,
        changed=agents,
        sentence=f"{host}: restarted {count(len(agents), 'agent')}{listing(agents)}"
        + (f" on version {version}" if version else "")
        + (f", each down at most {worst:.2f} s" if measures else ""),
        commands=[res.command, status_cmd],
        report=[ln.strip() for ln in res.stdout.splitlines() if ln.strip()],
        measures=measures,
        started_at=started,
        ended_at=now(),
    )
