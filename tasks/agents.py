"""Verbs on agents and the `.disabled` file: idempotent, verified, each with an outcome sentence.

Every verb reads the host first, acts only on what differs from the wanted state, then reads the
host again and fails with `StepFailed` if the post-condition does not hold. Running a verb twice is
harmless: the second run changes nothing and says so.

They take the run's SSH client; a plan's steps run them through `tasks.verbs`, as Prefect tasks
that retry only on transient SSH errors.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from flows.plans.rolling_upgrade import AgentStatus, parse_status
from flows.plans.words import count
from tasks.adapters.ssh import CommandResult, TransientSshError
from tasks.outcome import StepFailed, StepResult, listing, now, was
from tasks.remote import SiteShell
from tasks.site_state import HostSnapshot, snapshot_host

#: How long `service transfer-agents start` may block (it waits for the DB lock, ~1 min on FTS 2).
START_TIMEOUT_S = 120.0


def _read(shell: SiteShell, host: str, verb: str) -> HostSnapshot:
    snap = snapshot_host(shell, host)
    if not snap.reachable:
        if snap.error_kind == "transient":
            raise TransientSshError(f"{verb}: {snap.error}", host=host)
        raise StepFailed(f"{verb}: {snap.error}", host=host, verb=verb)
    return snap


def read_status(shell: SiteShell, host: str) -> tuple[list[AgentStatus], str]:
    """The running agents as the host's init script reports them (the profile's
    `agents_status`), and the command that was run.

    Raises:
        SshError: the host could not be reached.
    """
    res = shell.run(host, "agents_status")
    return parse_status(res.stdout, shell.site.commands.agent_status_regex), res.command


def _check_configured(shell: SiteShell, host: str, agents: list[str], verb: str) -> None:
    site = shell.site
    allowed = {a.name for a in site.agents_configured_on(host)}
    foreign = [a for a in agents if a not in allowed]
    if foreign:
        raise StepFailed(
            f"{host}: {verb}: {', '.join(foreign)} not configured on {host} in site {site.site} "
            f"(configured there: {', '.join(sorted(allowed)) or 'none'}); fix the site file's "
            "primary/backup or choose another host",
            host=host,
            verb=verb,
        )


def startable(shell: SiteShell, host: str, agents: list[str], verb: str) -> HostSnapshot:
    """The host's snapshot, once the agents are known to be configured there and not listed in
    its `.disabled` file (unless they already run).

    Raises:
        StepFailed: an agent is not configured on the host, or is listed as disabled there.
    """
    _check_configured(shell, host, agents, verb)
    snap = _read(shell, host, verb)
    blocked = [a for a in agents if a in snap.disabled and not snap.runs(a)]
    if blocked:
        raise StepFailed(
            f"{host}: {', '.join(blocked)} listed in {shell.site.commands.disabled_file}; clear "
            "the entries first (clear-disabled), then start",
            host=host,
            verb=verb,
        )
    return snap


def _tail(res: CommandResult) -> str:
    text = (res.stdout + res.stderr).strip()
    return text[-300:] if text else "no output"


def stop_agents(
    shell: SiteShell, host: str, agents: list[str] | None = None, read_first: bool = True
) -> StepResult:
    """Stop agents on a host (all agent processes running there when `agents` is None).

    Post-condition: none of those agents runs on the host. With `read_first` False (and named
    agents) the stop command runs for each without reading the host first (it is harmless on an
    agent already stopped): where the stop is on a channel's critical path, the read would only
    delay it.
    """
    verb = "stop-agents"
    started = now()
    if read_first or agents is None:
        snap = _read(shell, host, verb)
        wanted = agents if agents is not None else [a.name for a in snap.agents]
        running = [a for a in wanted if snap.runs(a)]
    else:
        wanted = running = list(agents)
    already = [a for a in wanted if a not in running]
    commands: list[str] = []
    if running:
        if agents is None:
            res = shell.run(host, "stop_all", timeout=START_TIMEOUT_S)
            commands.append(res.command)
        else:
            with ThreadPoolExecutor(max_workers=min(8, len(running))) as ex:
                results = list(
                    ex.map(
                        lambda a: shell.run(host, "stop_agent", agent=a, timeout=START_TIMEOUT_S),
                        running,
                    )
                )
            commands += [r.command for r in results]
        after = _read(shell, host, verb)
        still = [a for a in running if after.runs(a)]
        if still:
            raise StepFailed(
                f"{host}: {', '.join(still)} still running after `{'; '.join(commands)}`; "
                f"stop it by hand on {host} (kill the process) and run the step again",
                host=host,
                verb=verb,
            )
    sentence = f"{host}: stopped {count(len(running), 'agent')}{listing(running)}" + (
        f", {len(already)} {was(len(already))} already stopped"
        if read_first or agents is None
        else ""
    )
    return StepResult(
        host=host,
        verb=verb,
        changed=running,
        unchanged=already,
        sentence=sentence,
        commands=commands,
        started_at=started,
        ended_at=now(),
    )


def start_agents(shell: SiteShell, host: str, agents: list[str]) -> StepResult:
    """Start agents on a host; each start blocks while the agent waits for its DB lock.

    Pre-condition: the agents are configured on the host and not listed in its `.disabled` file
    (clear them first with `clear_disabled`). Post-condition: each agent runs on the host.
    """
    verb = "start-agents"
    started = now()
    snap = startable(shell, host, agents, verb)
    to_start = [a for a in agents if not snap.runs(a)]
    already = [a for a in agents if a not in to_start]
    commands: list[str] = []
    failures: list[str] = []
    if to_start:
        with ThreadPoolExecutor(max_workers=min(8, len(to_start))) as ex:
            results = list(
                ex.map(
                    lambda a: shell.run(host, "start_agent", agent=a, timeout=START_TIMEOUT_S),
                    to_start,
                )
            )
        commands += [r.command for r in results]
        after = _read(shell, host, verb)
        for a, res in zip(to_start, results, strict=True):
            if not after.runs(a):
                failures.append(f"{a}: `{res.command}` exited {res.exit_code}: {_tail(res)}")
        if failures:
            raise StepFailed(
                f"{host}: {count(len(failures), 'agent')} did not start: "
                + "; ".join(failures)
                + "; if the DB lock is held by the old host's session, run drop-db-lock or wait",
                host=host,
                verb=verb,
            )
    sentence = (
        f"{host}: started {count(len(to_start), 'agent')}{listing(to_start)}, {len(already)} "
        f"{was(len(already))} "
        "already running"
    )
    return StepResult(
        host=host,
        verb=verb,
        changed=to_start,
        unchanged=already,
        sentence=sentence,
        commands=commands,
        started_at=started,
        ended_at=now(),
    )


_edit_locks: dict[tuple[str, str], threading.Lock] = {}
_edit_locks_guard = threading.Lock()


def _edit_lock(shell: SiteShell, host: str) -> threading.Lock:
    # the edit is read-modify-write on the host: two chains of one move (pipelined) must not
    # interleave on the same file; two procedures never run at once for a service
    site = shell.site
    with _edit_locks_guard:
        return _edit_locks.setdefault((site.site, host), threading.Lock())


def _edit_disabled(shell: SiteShell, host: str, agents: list[str], listed: bool) -> StepResult:
    """Make each agent listed (`listed=True`) or not listed in the host's `.disabled` file."""
    with _edit_lock(shell, host):
        return _edit_disabled_locked(shell, host, agents, listed)


def _edit_disabled_locked(
    shell: SiteShell, host: str, agents: list[str], listed: bool
) -> StepResult:
    site = shell.site
    verb = "write-disabled" if listed else "clear-disabled"
    path = site.commands.disabled_file
    started = now()
    snap = _read(shell, host, verb)
    if snap.disabled_error:
        raise StepFailed(
            f"{snap.disabled_error}; its entries are unknown, so it is not rewritten: fix the "
            f"file on {host} and run the step again",
            host=host,
            verb=verb,
        )
    change = [a for a in agents if (a in snap.disabled) != listed]
    same = [a for a in agents if a not in change]
    commands = []
    if change:
        names = snap.disabled + change if listed else [a for a in snap.disabled if a not in change]
        if names:
            content = "".join(f"{n}\n" for n in names)
            res = shell.run_argv(host, site.commands.disabled_argv("write"), stdin=content)
        else:  # no entry left: no file, as the manual `rm -f` leaves it
            res = shell.run_argv(host, site.commands.disabled_argv("remove"))
        commands.append(res.command)
        if not res.ok:
            raise StepFailed(
                f"{host}: cannot write {path}: `{res.command}` exited {res.exit_code}: "
                f"{_tail(res)}; check the disk and the file's permissions on {host}",
                host=host,
                verb=verb,
            )
        after = _read(shell, host, verb)
        wrong = [a for a in agents if (a in after.disabled) != listed]
        if wrong:
            raise StepFailed(
                f"{host}: {', '.join(wrong)} {'missing from' if listed else 'still in'} {path} "
                "after writing it; check the file system",
                host=host,
                verb=verb,
            )
    if listed:
        sentence = (
            f"{host}: disabled {count(len(change), 'agent')}{listing(change)} in {path}, "
            f"{len(same)} {was(len(same))} already listed"
        )
    else:
        sentence = (
            f"{host}: cleared {count(len(change), 'agent')}{listing(change)} from {path}, "
            f"{len(same)} {was(len(same))} not listed"
        )
    return StepResult(
        host=host,
        verb=verb,
        changed=change,
        unchanged=same,
        sentence=sentence,
        commands=commands,
        started_at=started,
        ended_at=now(),
    )


def write_disabled(shell: SiteShell, host: str, agents: list[str]) -> StepResult:
    """Add agents to the host's `.disabled` file, so a reboot does not start them there."""
    return _edit_disabled(shell, host, agents, listed=True)


def clear_disabled(shell: SiteShell, host: str, agents: list[str]) -> StepResult:
    """Remove agents from the host's `.disabled` file (the file goes when it would be empty)."""
    return _edit_disabled(shell, host, agents, listed=False)
