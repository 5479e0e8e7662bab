"""Read hosts that no site file describes yet (`handover init`): read-only, each within a bound.

Each host is read in one SSH round trip with the default command profile (the FTS 2 agents'):
the process table, the `.disabled` file, the init script's status of every agent it knows, the
installed version and the front end's status; then, on the hosts where channel agents run, the
state of their channels (a second round trip). Nothing is written on a host: every command is a
query. The host key must already be known (`known_hosts`): an unknown key is refused as in every
run. A host whose SSH port does not greet within the bound, or that refuses the login, is
reported with the reason and never waited for beyond the bound; the others are read side by
side.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from config.loader import parse_site
from config.site import Site
from flows.plans.rolling_upgrade import parse_installed
from flows.plans.site_draft import HostReading, agent_kind
from flows.plans.snapshot import parse_disabled, parse_processes
from tasks.adapters.ssh import SshError
from tasks.frontend import frontend_state
from tasks.probe import sshd_greets
from tasks.remote import SiteShell

#: one agent the init script knows, in `agents_status`' output: running, stopped (maybe
#: disabled) or dead (the lab's and FTS 2's LSB wording)
KNOWN_AGENT = re.compile(
    r"^(?P<agent>\S+) (?:\(pid \d+\) )?is (?P<state>running|stopped|dead)(?P<rest>.*)$"
)


def provisional_site(
    hosts: Sequence[tuple[str, str, int]],
    *,
    user: str,
    key_file: Path,
    known_hosts: Path,
    timeout_s: float,
) -> Site:
    """A site of just these hosts and the SSH settings, to read them with the SSH layer."""
    return parse_site(
        {
            "site": "init",
            "hosts": [{"name": n, "address": a, "port": p} for n, a, p in hosts],
            "service": {"name": "init", "kind": "web-tools"},
            "ssh": {
                "user": user,
                "key_file": str(key_file),
                "known_hosts": str(known_hosts),
                "connect_timeout_s": timeout_s,
                "probe_timeout_s": min(timeout_s, 30.0),
                "command_timeout_s": max(timeout_s, 30.0),
            },
        },
        "handover init",
    )


def parse_known_agents(text: str) -> dict[str, str]:
    """Agent -> state (running, stopped, disabled, dead) from `agents_status`' output."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = KNOWN_AGENT.match(line.strip())
        if m and agent_kind(m.group("agent")) is not None:
            state = m.group("state")
            if state == "stopped" and "disabled" in m.group("rest"):
                state = "disabled"
            out[m.group("agent")] = state
    return out


def read_one(shell: SiteShell, name: str) -> HostReading:
    """One host's reading (module docstring); a host that cannot be read says why."""
    site = shell.site
    h = site.host(name)
    base = HostReading(name=name, address=h.address, port=h.port)
    bound = site.ssh.connect_timeout_s
    if not sshd_greets(h.address, h.port, bound):
        return base.model_copy(
            update={
                "reachable": False,
                "error": f"no SSH greeting from {h.address}:{h.port} within {bound:g} s",
            }
        )
    c = site.commands
    try:
        ps, disabled, status, installed, front = shell.run_many(
            name,
            [
                ("list_processes", {}),
                c.disabled_argv("read"),
                ("agents_status", {}),
                ("installed_version", {}),
                ("frontend_status", {}),
            ],
        )
    except SshError as exc:
        return base.model_copy(update={"reachable": False, "error": str(exc)})
    agents, _ = parse_processes(ps.stdout, c)
    state = frontend_state(name, front)
    reading = base.model_copy(
        update={
            "configured": parse_known_agents(status.stdout),
            "running": [a.name for a in agents],
            "disabled": parse_disabled(disabled.stdout) if disabled.ok else [],
            "version": parse_installed(installed.stdout, c.installed_version_regex)
            if installed.ok
            else None,
            "frontend_role": state.role if state.reachable and state.running else None,
        }
    )
    kinds = [agent_kind(a) for a in reading.running]
    channels = [k[1] for k in kinds if k is not None and k[0] == "channel"]
    if channels:
        try:
            results = shell.run_many(name, [("channel_state", {"channel": ch}) for ch in channels])
        except SshError:
            results = []
        states = {}
        for ch, r in zip(channels, results, strict=False):
            m = re.search(c.channel_state_regex, r.stdout) if r.ok else None
            if m:
                states[ch] = m.group(1)
        reading = reading.model_copy(update={"channels": states})
    return reading


def read_hosts(site: Site, progress: Callable[[str], None] = lambda m: None) -> list[HostReading]:
    """Every host of the provisional site, read side by side, in the order given."""
    with SiteShell(site) as shell, ThreadPoolExecutor(site.ssh.parallelism) as pool:

        def one(name: str) -> HostReading:
            r = read_one(shell, name)
            progress(
                f"{name}: "
                + (
                    f"{len(r.configured)} agents known, {len(r.running)} running"
                    + (f", version {r.version}" if r.version else "")
                    + (f", front end {r.frontend_role}" if r.frontend_role else "")
                    if r.reachable
                    else f"not read: {r.error}"
                )
            )
            return r

        return list(pool.map(one, [h.name for h in site.hosts]))
