"""A site file drafted from what the hosts say (`handover init`): pure, from recorded readings.

`HostReading` is what one host said over SSH, read-only: the agents its init script knows
(configured, each running, stopped, disabled or dead), the agents in its process table, its
`.disabled` file, the installed version, its front end's role, and the channels' states as the
channel tool reports them. `draft_site` turns the readings of every host into the text of a site
file: what it could infer, each guess with a comment saying how it was inferred, and a ``TODO``
for what no host can say (an agent's backup when no other host has it configured, the secrets,
the DNS keys, the approvers). `handover check-config` refuses a file with a ``TODO`` left and
names each one (`config.loader`).

The inferences:

* an agent's **primary** is the host where it runs (or, when it runs nowhere, the host where it
  is configured and not disabled);
* its **backup** is another host that has it configured (stopped or disabled there); with
  several, the first in the order given; with none, a ``TODO``;
* a host's **roles** follow the agents it is primary for (``channel-agents``, ``vo-agents``),
  ``spare`` when it is primary for none;
* the **front end**: the hosts whose front end answered, the master first;
* a host that did not answer is listed with a comment, and its agents are unknown.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pydantic import BaseModel, Field

from config.site.base import CHANNEL_AGENT_PREFIX, VO_AGENT_PREFIX

#: what `check-config` looks for: a value that starts with it is not filled in yet
TODO = "TODO"


class HostReading(BaseModel):
    """What one host said, read-only (`tasks.discover.read_hosts`)."""

    name: str
    address: str
    port: int = 22
    reachable: bool = True
    #: why the host could not be read (`reachable` False)
    error: str = ""
    #: agents its init script knows, with their state (running, stopped, disabled, dead)
    configured: dict[str, str] = Field(default_factory=dict)
    #: agents in its process table
    running: list[str] = Field(default_factory=list)
    #: agents named in its `.disabled` file
    disabled: list[str] = Field(default_factory=list)
    #: the installed version of the agents' software (None: not installed, or unreadable)
    version: str | None = None
    #: its front end's role (``master``, ``slave``) when it has one that answered
    frontend_role: str | None = None
    #: channel -> state, as this host's channel tool reports them (channels it serves)
    channels: dict[str, str] = Field(default_factory=dict)


class DraftOptions(BaseModel):
    """What the operator gave `handover init`."""

    site: str = ""
    service: str = ""
    user: str = "root"
    key_file: str = ""
    known_hosts: str = ""
    connect_timeout_s: float = 5.0
    #: the database's DSN without its password (postgresql://USER@HOST:PORT/NAME), if given
    db: str = ""


def agent_kind(name: str) -> tuple[str, str] | None:
    """(``channel`` or ``vo``, its channel or VO) from an FTS 2 agent's process name."""
    if name.startswith(CHANNEL_AGENT_PREFIX):
        return "channel", name.removeprefix(CHANNEL_AGENT_PREFIX)
    if name.startswith(VO_AGENT_PREFIX):
        return "vo", name.removeprefix(VO_AGENT_PREFIX)
    return None


def _q(value: object) -> str:
    """A YAML scalar, quoted when it must be (JSON is YAML)."""
    text = str(value)
    plain = text and all(c.isalnum() or c in "._-/:@" for c in text) and not text[0].isdigit()
    return (
        text if plain and text not in ("true", "false", "null", "yes", "no") else json.dumps(text)
    )


class _Agent(BaseModel):
    name: str
    kind: str
    what: str
    primary: str
    backup: str | None
    why_primary: str
    why_backup: str


def infer_agents(readings: Sequence[HostReading]) -> list[_Agent]:
    """Each agent found on a host, with its primary and backup guessed (module docstring)."""
    order = [r.name for r in readings]
    seen: dict[str, None] = {}
    for r in readings:
        for a in [*r.running, *r.configured]:
            if agent_kind(a) is not None:
                seen.setdefault(a, None)
    out = []
    for a in seen:
        kind, what = agent_kind(a) or ("", "")
        runs = [r.name for r in readings if a in r.running]
        enabled = [
            r.name
            for r in readings
            if a in r.configured and a not in r.disabled and r.configured[a] != "disabled"
        ]
        has = [r.name for r in readings if a in r.configured or a in r.running]
        if runs:
            primary = runs[0]
            why = f"runs on {primary}" + (
                f" (also running on {', '.join(runs[1:])}: check)" if runs[1:] else ""
            )
        elif enabled:
            primary, why = enabled[0], f"runs nowhere; configured and enabled on {enabled[0]}"
        else:
            primary, why = has[0], f"runs nowhere; configured on {has[0]}"
        others = sorted((h for h in has if h != primary), key=order.index)
        backup = others[0] if others else None
        if backup is None:
            why_b = "no other host has it configured: name the host it moves to"
        else:
            state = next(r.configured.get(a, "?") for r in readings if r.name == backup)
            why_b = f"configured on {backup} ({state})" + (
                f"; also on {', '.join(others[1:])}" if others[1:] else ""
            )
        out.append(
            _Agent(
                name=a,
                kind=kind,
                what=what,
                primary=primary,
                backup=backup,
                why_primary=why,
                why_backup=why_b,
            )
        )
    return out


def draft_site(readings: Sequence[HostReading], opts: DraftOptions) -> str:
    """The text of a site file drafted from the hosts' readings (module docstring)."""
    agents = infer_agents(readings)
    primaries: dict[str, set[str]] = {}
    for a in agents:
        primaries.setdefault(a.primary, set()).add(a.kind)
    lines = [
        "# Drafted by `handover init` from what the hosts said over SSH (read-only). Each guess",
        "# has a comment saying how it was inferred; fill in every TODO, then run",
        "# `handover check-config FILE` until it says ok.",
        f"site: {_q(opts.site or TODO + ' the site short name')}",
        "",
        "hosts:",
    ]
    versions = {r.version for r in readings if r.reachable and r.version}
    for r in readings:
        if not r.reachable:
            lines.append(f"  # {r.name} did not answer: {r.error[:160]}")
            lines.append("  # its agents are unknown; read it again when it is up")
        kinds = primaries.get(r.name, set())
        roles = [f"{k}-agents" for k in ("channel", "vo") if k in kinds] or (
            ["spare"] if r.reachable else []
        )
        lines.append(
            f"  - {{name: {_q(r.name)}, address: {_q(r.address)}, port: {r.port}, "
            f"roles: [{', '.join(roles)}]}}"
        )
    lines += ["", "service:", f"  name: {_q(opts.service or TODO + ' the service name')}"]
    if not agents:
        lines.append(f"  agents: []  # {TODO}: no host has agents configured or running")
    else:
        lines.append("  agents:")
    for a in agents:
        lines.append(f"    # {a.name}: {a.why_primary}; backup: {a.why_backup}")
        backup = _q(a.backup) if a.backup else f'"{TODO} the host {a.what} moves to"'
        lines.append(
            f"    - {{{a.kind}: {_q(a.what)}, primary: {_q(a.primary)}, backup: {backup}}}"
        )
    states = {c: s for r in readings for c, s in r.channels.items()}
    if states:
        lines.append(
            "  # channel states now: " + ", ".join(f"{c} {s}" for c, s in sorted(states.items()))
        )
    lines += [
        "",
        "ssh:",
        f"  user: {_q(opts.user)}",
        f"  key_file: {_q(opts.key_file or TODO + ' the private key handover logs in with')}",
        f"  known_hosts: {_q(opts.known_hosts or TODO + ' the known_hosts file of the hosts')}",
        f"  connect_timeout_s: {opts.connect_timeout_s:g}",
    ]
    if versions:
        lines += [
            "",
            "# installed: "
            + ", ".join(f"{r.name} {r.version}" for r in readings if r.reachable and r.version),
        ]
        if len(versions) > 1:
            lines.append(
                "# the hosts run different versions: a rolling upgrade brings them in line"
            )
    lines += ["", *_database(opts)]
    fronts = [r for r in readings if r.frontend_role in ("master", "slave")]
    fronts.sort(key=lambda r: r.frontend_role != "master")
    if len(fronts) >= 2:
        lines += [
            "",
            "# the hosts whose front end answered, the master first (its role now)",
            "frontend:",
            f"  hosts: [{', '.join(_q(r.name) for r in fronts)}]",
            "  # " + ", ".join(f"{r.name} {r.frontend_role}" for r in fronts),
            "",
            "# the front end's DNS alias: no host can say it",
            "dns:",
            f'  server: "{TODO} the primary DNS server of the alias zone"',
            f'  zone: "{TODO} the zone"',
            f'  alias: "{TODO} the service alias"',
            f'  tsig_key_name: "{TODO} the TSIG key name"',
            f'  tsig_key: {{file: "{TODO} the file holding the TSIG key"}}',
        ]
    lines += [
        "",
        "# approvals in Slack (remove the section to approve in the Prefect UI only)",
        "slack:",
        f'  channel: "{TODO} the operators\' channel, e.g. #fts-ops"',
        f'  approvers: ["{TODO} the Slack user ids who may approve"]',
        "  bot_token: {env: HANDOVER_SLACK_BOT_TOKEN}",
        "  signing_secret: {env: HANDOVER_SLACK_SIGNING_SECRET}",
    ]
    return "\n".join(lines) + "\n"


def _database(opts: DraftOptions) -> list[str]:
    """The `database:` section from a DSN (postgresql://USER@HOST:PORT/NAME), else TODOs."""
    from urllib.parse import urlsplit

    if not opts.db:
        return [
            "# the service's database (channel states, the agents' sessions): no host can say it",
            "# database: {kind: oracle, host: ..., port: 1521, database: ..., user: ...,",
            "#            password: {file: ...}}",
        ]
    u = urlsplit(opts.db)
    kind = {"postgresql": "postgresql", "postgres": "postgresql", "oracle": "oracle"}.get(
        u.scheme, f"{TODO} postgresql or oracle"
    )
    return [
        f"# from --db {u.scheme}://{u.username or ''}@{u.hostname or ''}"
        + (f":{u.port}" if u.port else "")
        + (u.path or ""),
        "database:",
        f"  kind: {_q(kind)}",
        f"  host: {_q(u.hostname or TODO + ' the database host')}",
        *([f"  port: {u.port}"] if u.port else []),
        f"  database: {_q((u.path or '').lstrip('/') or TODO + ' the database name')}",
        f"  user: {_q(u.username or TODO + ' the user')}",
        f'  password: {{file: "{TODO} the file holding the password"}}',
    ]
