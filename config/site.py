"""The site model: what a site is made of, and the invariants a site file must satisfy.

A site file (YAML) describes one grid service deployment: its hosts, the agents of the service with
their primary and backup hosts, the commands used to act on the hosts (the "command profile", seed
000's commands by default), SSH settings, the database, DNS, Slack and per-procedure policies.

Secrets are never inline: a secret field holds a reference (`{env: NAME}`, `{file: PATH}` or
`{prefect_secret: BLOCK}`) that is resolved only when the secret is used.

Every name that can reach a remote shell (host, channel, VO and agent names) is checked against a
strict pattern when the file loads, and commands are argv templates whose placeholders are whole
words, so quoting is structural rather than a matter of care.

Example:
    >>> from config.loader import load_site
    >>> site = load_site("config/sites/lab.yaml")
    >>> [a.name for a in site.agents_on("fts101")][:1]
    ['glite-transfer-channel-agent-urlcopy-CERN-CERN']
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from config.invariants import InvariantError, Problem
from config.private_files import SecretError as SecretError  # re-exported: callers import it here
from config.private_files import read_secret_file

# --- names that reach a shell -------------------------------------------------------------------

HOST_NAME_RE = r"^[a-z][a-z0-9-]{0,62}$"
CHANNEL_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
VO_NAME_RE = r"^[a-z][a-z0-9._-]{0,31}$"
AGENT_NAME_RE = r"^[A-Za-z][A-Za-z0-9._-]{0,127}$"
ENV_NAME_RE = r"^[A-Z_][A-Z0-9_]{0,127}$"
SLACK_USER_RE = r"^[UW][A-Z0-9]{2,20}$"

HostName = Annotated[str, StringConstraints(pattern=HOST_NAME_RE)]
ChannelName = Annotated[str, StringConstraints(pattern=CHANNEL_NAME_RE)]
VoName = Annotated[str, StringConstraints(pattern=VO_NAME_RE)]
AgentName = Annotated[str, StringConstraints(pattern=AGENT_NAME_RE)]

CHANNEL_AGENT_PREFIX = "glite-transfer-channel-agent-urlcopy-"
VO_AGENT_PREFIX = "glite-transfer-vo-agent-"


#: what the `.disabled` read prints when the file does not exist
DISABLED_ABSENT = "__handover_no_disabled_file__"


def short_name(agent: str) -> str:
    """A short label for an agent: its channel (``CERN-CERN``) or ``vo atlas``."""
    if agent.startswith(CHANNEL_AGENT_PREFIX):
        return agent.removeprefix(CHANNEL_AGENT_PREFIX)
    if agent.startswith(VO_AGENT_PREFIX):
        return "vo " + agent.removeprefix(VO_AGENT_PREFIX)
    return agent


class _Model(BaseModel):
    """Base for every site model: unknown keys are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- secrets ------------------------------------------------------------------------------------


class SecretRef(_Model):
    """A reference to a secret. Exactly one of `env`, `file` or `prefect_secret` is set.

    A `file` must belong to the user handover runs as (or root) and be closed to its group and
    others (``chmod 600``), as OpenSSH requires of a private key; it is checked when read.

    Example:
        ``password: {env: FTS_DB_PASSWORD}`` or ``password: {file: /etc/handover/db-password}``.
    """

    env: Annotated[str, StringConstraints(pattern=ENV_NAME_RE)] | None = None
    file: Path | None = None
    prefect_secret: (
        Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")] | None
    ) = None

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, data: object) -> object:
        if isinstance(data, str | int | float):
            raise ValueError(
                "inline secrets are not allowed; reference it instead: "
                "{env: VARIABLE}, {file: /absolute/path} or {prefect_secret: block-name}"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        given = [k for k in ("env", "file", "prefect_secret") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a secret reference needs exactly one of env, file or prefect_secret "
                f"(got {', '.join(given) or 'none'})"
            )
        if self.file is not None and not self.file.is_absolute():
            raise ValueError(f"secret file path must be absolute, got {self.file}")
        return self

    def describe(self) -> str:
        """Say where the secret comes from, without its value."""
        if self.env is not None:
            return f"environment variable {self.env}"
        if self.file is not None:
            return f"file {self.file}"
        return f"Prefect Secret block {self.prefect_secret}"

    def resolve(self) -> SecretStr:
        """Read the secret now.

        Returns:
            The secret, wrapped so that printing it shows ``**********``.

        Raises:
            SecretError: the variable is unset, the file unreadable or not private (see
                `config.private_files.read_secret_file`: yours or root's, mode 0600), or the
                block missing.
        """
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise SecretError(f"secret from {self.describe()} is not set; export it first")
            return SecretStr(value)
        if self.file is not None:
            return SecretStr(read_secret_file(self.file, self.describe()))
        from prefect.blocks.system import Secret

        try:
            block = cast("Secret[Any]", Secret.load(str(self.prefect_secret)))
        except ValueError as exc:
            raise SecretError(
                f"secret from {self.describe()} does not exist; create it in the Prefect UI "
                "(Blocks > Secret) or with prefect.blocks.system.Secret(value=...).save(name)"
            ) from exc
        return SecretStr(str(block.get()))


# --- hosts and agents ---------------------------------------------------------------------------


class HostRole(StrEnum):
    """What a host is for."""

    CHANNEL_AGENTS = "channel-agents"
    VO_AGENTS = "vo-agents"
    SPARE = "spare"
    DATABASE = "database"
    WEB = "web"


class Host(_Model):
    """A machine of the site, reached by SSH."""

    name: HostName
    address: str
    port: int = Field(default=22, ge=1, le=65535)
    roles: list[HostRole] = Field(default_factory=list)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            if not re.fullmatch(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$", v):
                raise ValueError(f"{v!r} is neither an IP address nor a valid DNS name") from None
        return v


def dns_server_address(v: str) -> str:
    """A DNS server's address: an IP address, so that an update never depends on resolving a
    name (and dnspython sends queries to addresses only).

    Raises:
        ValueError: `v` is not an IP address.
    """
    try:
        ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(
            f"{v!r} is not an IP address (a DNS server is given by its address, so that an "
            "update never depends on resolving it)"
        ) from None
    return v


class Agent(_Model):
    """One agent daemon of the service: a channel agent (one channel) or a VO agent (one VO).

    The name defaults to the FTS 2 process name: ``glite-transfer-channel-agent-urlcopy-<CHANNEL>``
    or ``glite-transfer-vo-agent-<VO>``.
    """

    channel: ChannelName | None = None
    vo: VoName | None = None
    name: AgentName = ""
    primary: HostName
    backup: HostName

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("name"):
            if data.get("channel") and not data.get("vo"):
                data = {**data, "name": f"{CHANNEL_AGENT_PREFIX}{data['channel']}"}
            elif data.get("vo") and not data.get("channel"):
                data = {**data, "name": f"{VO_AGENT_PREFIX}{data['vo']}"}
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> Agent:
        if (self.channel is None) == (self.vo is None):
            raise ValueError("an agent serves exactly one channel or one VO: set `channel` or `vo`")
        return self

    @property
    def kind(self) -> Literal["channel", "vo"]:
        """``channel`` for a channel agent, ``vo`` for a VO agent."""
        return "channel" if self.channel is not None else "vo"


class Service(_Model):
    """The service whose agents handover moves."""

    name: HostName
    kind: Literal["fts2-agents"] = "fts2-agents"
    agents: list[Agent] = Field(min_length=1)


# --- command profile ----------------------------------------------------------------------------

ArgvTemplate = list[Annotated[str, StringConstraints(min_length=1)]]

#: The placeholders each command template may use (all values are validated names).
COMMAND_PLACEHOLDERS: dict[str, frozenset[str]] = {
    "list_processes": frozenset(),
    "channel_state": frozenset({"channel"}),
    "set_channel_state": frozenset({"channel", "state"}),
    "start_all": frozenset(),
    "stop_all": frozenset(),
    "start_agent": frozenset({"agent"}),
    "stop_agent": frozenset({"agent"}),
    "frontend_status": frozenset(),
    "frontend_enable": frozenset({"epoch"}),
    "frontend_disable": frozenset({"redirect", "seconds"}),
    "frontend_fence": frozenset({"epoch"}),
    "cluster_maintenance": frozenset(),
    "upgrade": frozenset({"version"}),
    "configure": frozenset(),
    "restart": frozenset(),
    "installed_version": frozenset(),
    "agents_status": frozenset(),
}

#: a software version as the command profile receives it (``2``, ``3.1.4-1``)
VERSION_RE = r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$"
Version = Annotated[str, StringConstraints(pattern=VERSION_RE)]


class Commands(_Model):
    """The command profile: how each verb is done on a host (seed 000's commands by default).

    Each command is an argv template; a placeholder (``{channel}``, ``{state}``, ``{agent}``)
    must be a whole word, so a value can never change the shape of the command.
    """

    list_processes: ArgvTemplate = ["ps", "-eo", "pid=,user=,args="]
    channel_state: ArgvTemplate = ["glite-transfer-channel-list", "{channel}"]
    channel_state_regex: str = r"State:\s*(\w+)"
    set_channel_state: ArgvTemplate = ["glite-transfer-channel-set", "-S", "{state}", "{channel}"]
    start_all: ArgvTemplate = ["service", "transfer-agents", "start"]
    stop_all: ArgvTemplate = ["service", "transfer-agents", "stop"]
    start_agent: ArgvTemplate = ["service", "transfer-agents", "start", "--instance", "{agent}"]
    stop_agent: ArgvTemplate = ["service", "transfer-agents", "stop", "--instance", "{agent}"]
    #: the web front end (seed 002): its role and epoch as one JSON line (`tasks.frontend`)
    frontend_status: ArgvTemplate = ["fts-frontend", "status"]
    #: claim the epoch in the database, then serve as the master with it
    frontend_enable: ArgvTemplate = ["fts-frontend", "enable", "{epoch}"]
    #: serve as a slave; for `seconds`, answer clients with a redirect to `redirect` (an
    #: address, or ``-`` for none)
    frontend_disable: ArgvTemplate = [
        "fts-frontend",
        "disable",
        "--redirect",
        "{redirect}",
        "--for",
        "{seconds}",
    ]
    #: raise the database's epoch without serving (fences a master that cannot be reached)
    frontend_fence: ArgvTemplate = ["fts-frontend", "fence", "{epoch}"]
    #: prints ``true`` when the cluster (Pacemaker) is in maintenance mode
    cluster_maintenance: ArgvTemplate = [
        "crm_attribute",
        "--type",
        "crm_config",
        "--name",
        "maintenance-mode",
        "--query",
        "--quiet",
        "--default",
        "false",
    ]
    #: seed 001: install a version of the agents' software (SPMA)
    upgrade: ArgvTemplate = ["spma_wrapper.sh", "--version", "{version}"]
    #: seed 001: re-render the agents' configuration from the site-info file (YAIM); its output
    #: (the changes) is kept in the run
    configure: ArgvTemplate = [
        "/opt/glite/yaim/scripts/configure_node",
        "/opt/glite/yaim/etc/site-info.def",
        "FTA",
    ]
    #: seed 001: restart every agent of the host; running transfers continue
    restart: ArgvTemplate = ["service", "transfer-agents", "restart"]
    #: the installed version: the first group of `installed_version_regex` in its output
    installed_version: ArgvTemplate = ["rpm", "-q", "glite-data-transfer-agents"]
    installed_version_regex: str = r"^glite-data-transfer-agents-([^-\s]+)-"
    #: each running agent, one line each, parsed by `agent_status_regex` (named groups:
    #: ``agent`` required; ``state``, ``version``, ``config`` and ``down`` (seconds down at its
    #: last restart) used when the init script reports them)
    agents_status: ArgvTemplate = ["service", "transfer-agents", "status"]
    agent_status_regex: str = (
        r"^(?P<agent>\S+) \(pid \d+\) is running \((?P<state>[\w-]+)"
        r"(?:, version (?P<version>\S+), config (?P<config>\w+))?"
        r"(?:, down (?P<down>[\d.]+) s at its last restart)?\)"
    )
    #: an agent that is not running although it was not stopped (it failed, or died), one line
    #: each in the output of `agents_status` (named groups: ``agent``, and ``reason`` when the
    #: init script gives one); an agent not running with no such line was stopped cleanly
    agent_dead_regex: str = r"^(?P<agent>\S+) is dead(?: \((?P<reason>.*)\))?$"
    disabled_file: Path = Path("/etc/glite-data-transfer-agents.disabled")
    agent_user: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "edguser"
    agent_process_regex: str = r"^(glite-transfer-(?:channel-agent-urlcopy|vo-agent)-\S+)"
    transfer_process_regex: str = r"^([A-Za-z0-9][A-Za-z0-9._-]*)__(\S+)"

    @model_validator(mode="after")
    def _placeholders(self) -> Commands:
        for name, allowed in COMMAND_PLACEHOLDERS.items():
            for word in getattr(self, name):
                for found in re.findall(r"\{([^{}]*)\}", word):
                    if found not in allowed:
                        raise ValueError(
                            f"{name}: placeholder {{{found}}} is not allowed here "
                            f"(allowed: {', '.join(sorted(allowed)) or 'none'})"
                        )
                    if word != "{" + found + "}":
                        raise ValueError(
                            f"{name}: placeholder {{{found}}} must be a whole word, got {word!r}"
                        )
        try:
            if "agent" not in re.compile(self.agent_status_regex).groupindex:
                raise ValueError("agent_status_regex: the pattern needs a group named `agent`")
        except re.error as exc:
            raise ValueError(f"agent_status_regex: invalid regular expression ({exc})") from exc
        try:
            if "agent" not in re.compile(self.agent_dead_regex).groupindex:
                raise ValueError("agent_dead_regex: the pattern needs a group named `agent`")
        except re.error as exc:
            raise ValueError(f"agent_dead_regex: invalid regular expression ({exc})") from exc
        for name in (
            "channel_state_regex",
            "agent_process_regex",
            "transfer_process_regex",
            "installed_version_regex",
        ):
            try:
                if re.compile(getattr(self, name)).groups < 1:
                    raise ValueError(f"{name}: the pattern needs a capturing group")
            except re.error as exc:
                raise ValueError(f"{name}: invalid regular expression ({exc})") from exc
        if not self.disabled_file.is_absolute():
            raise ValueError("disabled_file must be an absolute path")
        return self

    def disabled_argv(self, op: Literal["read", "write", "remove"]) -> list[str]:
        """Read, write (content on stdin) or remove the disabled file.

        The read prints `DISABLED_ABSENT` when there is no file and fails when the file exists but
        cannot be read: "no entry" and "could not read" are different answers. The write goes to a
        temporary file renamed over the old one, so a reader never sees half a file. The path is
        a positional parameter of the shell, never part of its script.
        """
        f = str(self.disabled_file)
        return {
            "read": [
                "sh",
                "-c",
                f'if [ -e "$1" ]; then cat -- "$1"; else echo {DISABLED_ABSENT}; fi',
                "sh",
                f,
            ],
            "write": [
                "sh",
                "-c",
                'cat > "$1.handover-new" && mv -f -- "$1.handover-new" "$1"',
                "sh",
                f,
            ],
            "remove": ["rm", "-f", f],
        }[op]

    def argv(self, command: str, **values: str) -> list[str]:
        """Fill one template with already-validated values.

        Args:
            command: a key of ``COMMAND_PLACEHOLDERS``.
            **values: the placeholder values.

        Returns:
            The argv, ready for ``tasks.adapters.ssh.shell_command``.
        """
        out: list[str] = []
        for word in getattr(self, command):
            m = re.fullmatch(r"\{(\w+)\}", word)
            out.append(values[m.group(1)] if m else word)
        return out


# --- SSH, database, DNS, Slack ------------------------------------------------------------------


class SshConfig(_Model):
    """How handover logs in to hosts. Host keys are checked against `known_hosts`, never added."""

    user: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "root"
    key_file: Path
    known_hosts: Path
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    command_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    parallelism: int = Field(default=8, ge=1, le=256)


def _one_select(v: str | None, rows: str) -> str | None:
    """A site-configured query: one SELECT, nothing after it."""
    if v is not None and (not re.match(r"(?is)^\s*select\s", v) or ";" in v):
        raise ValueError(f"must be one SELECT statement without ';' returning {rows}")
    return v


_UPDATE_EXAMPLE = ", e.g. UPDATE channels SET state = :state WHERE name = :channel"


def _one_channel_update(v: str | None) -> str | None:
    """A site-configured channel write: one UPDATE binding :state and :channel."""
    if v is None:
        return v
    if not re.match(r"(?is)^\s*update\s", v) or ";" in v:
        raise ValueError("must be one UPDATE statement without ';'" + _UPDATE_EXAMPLE)
    missing = [b for b in (":state", ":channel") if not re.search(rf"{b}\b", v)]
    if missing:
        raise ValueError(
            "must bind :state (the new state) and :channel (the channel's name); missing "
            + " and ".join(missing)
            + _UPDATE_EXAMPLE
        )
    return v


class Database(_Model):
    """The service's database; handover uses it to find and kill DB sessions (the DB lock)."""

    kind: Literal["oracle", "mariadb", "postgresql"]
    host: str
    port: int = Field(ge=1, le=65535)
    database: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.$-]{1,128}$")]
    user: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_$#]{1,128}$")]
    password: SecretRef
    #: the bound of every database call: connecting, and each query or kill (a hung
    #: `gv$session` query must not hold an emergency move)
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: one SELECT returning (channel, state) rows for the channels; when set, a snapshot reads
    #: every channel's state with it (one database round trip from handover's machine) instead
    #: of one `commands.channel_state` per channel over SSH, and falls back to those commands
    #: when the database does not answer. Example (the lab): ``SELECT name, state FROM channels``
    channel_states_query: str | None = None
    #: one SELECT returning a (channel, seconds still needed) row for each transfer running now;
    #: when set, a pipelined clean move with a `cutover_window_s` chooses each channel's moment
    #: of going Inactive so that its drain is short (from file sizes and the channel's
    #: throughput on a real FTS database). Example (the lab): ``SELECT channel, greatest(0,
    #: extract(epoch FROM started_at) + duration_s - extract(epoch FROM clock_timestamp())) FROM
    #: jobs WHERE state = 'Active'``
    transfer_eta_query: str | None = None
    #: one UPDATE binding ``:state`` and ``:channel`` that sets one channel's state; when set,
    #: the channel verbs write the state with it (a few milliseconds from handover's machine)
    #: instead of running `commands.set_channel_state` on a host over SSH (a tool's start, a
    #: few hundred), and fall back to that command when the database does not answer or the
    #: statement changes no row. It bypasses the channel tool: a site sets it only where the
    #: tool does nothing beyond that write. Needs `channel_states_query`, which reads the write
    #: back. Example (the lab): ``UPDATE channels SET state = :state WHERE name = :channel``
    channel_set_statement: str | None = None

    _one_select = field_validator("channel_states_query")(
        classmethod(
            lambda cls, v: _one_select(
                v, "(channel, state) rows, e.g. SELECT name, state FROM channels"
            )
        )
    )
    _one_eta_select = field_validator("transfer_eta_query")(
        classmethod(
            lambda cls, v: _one_select(v, "a (channel, seconds still needed) row per transfer")
        )
    )
    _one_update = field_validator("channel_set_statement")(
        classmethod(lambda cls, v: _one_channel_update(v))
    )

    @model_validator(mode="after")
    def _write_read_back(self) -> Database:
        if self.channel_set_statement is not None and self.channel_states_query is None:
            raise ValueError(
                "channel_set_statement needs channel_states_query, which reads each write back "
                "(e.g. SELECT name, state FROM channels)"
            )
        return self

    @property
    def names_programs(self) -> bool:
        """Whether each session records its client program (PostgreSQL's
        ``application_name``, Oracle's program or module), so that one agent's session can be
        told from another's of the same machine; MariaDB records none."""
        return self.kind in ("postgresql", "oracle")

    @property
    def sees_lock_release(self) -> bool:
        """Whether a hot-standby hand-over can set a channel Active from here the moment its
        agent's session ends (`tasks.hand_over`): the database names programs and the site
        has a `channel_set_statement`."""
        return self.names_programs and self.channel_set_statement is not None


#: a DNS name (absolute or not): labels of letters, digits and hyphens (length checked by the
#: pattern's repetition bounds; Rust's regex engine, which pydantic uses, has no look-ahead)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DNS_NAME_RE = rf"^{_LABEL}(?:\.{_LABEL}){{0,126}}\.?$"
DnsName = Annotated[str, StringConstraints(pattern=DNS_NAME_RE, max_length=254)]


class DnsServer(_Model):
    """One authoritative DNS server."""

    address: str
    port: int = Field(default=53, ge=1, le=65535)

    _address = field_validator("address")(classmethod(lambda cls, v: dns_server_address(v)))


class Dns(_Model):
    """The DNS alias of the service and the TSIG key used for RFC 2136 updates."""

    #: the primary: where updates go
    server: str
    port: int = Field(default=53, ge=1, le=65535)
    #: the other authoritative servers (they transfer the zone from the primary); a switch
    #: checks that every one of them answers what it wrote
    secondaries: list[DnsServer] = Field(default_factory=list)
    zone: DnsName
    alias: DnsName
    ttl_s: int = Field(default=60, ge=1, le=86400)
    tsig_key_name: DnsName
    tsig_algorithm: Literal["hmac-sha256", "hmac-sha512", "hmac-sha384"] = "hmac-sha256"
    tsig_key: SecretRef

    _server = field_validator("server")(classmethod(lambda cls, v: dns_server_address(v)))

    @model_validator(mode="after")
    def _alias_in_zone(self) -> Dns:
        zone, alias = self.zone.rstrip(".").lower(), self.alias.rstrip(".").lower()
        if not alias.endswith("." + zone):
            raise ValueError(
                f"alias {self.alias!r} is not inside zone {self.zone!r}: the update that moves "
                "it goes to the zone's primary"
            )
        return self

    def servers(self) -> list[DnsServer]:
        """Every authoritative server: the primary first."""
        return [DnsServer(address=self.server, port=self.port), *self.secondaries]


class Frontend(_Model):
    """The service's web front end (seed 002): the master behind the DNS alias accepts the
    clients' jobs, the other hosts wait as slaves; `handover run switch` moves the master role
    and the alias together.

    Every write of a master carries the service epoch it was enabled with; the database refuses a
    write whose epoch is older than its own, so a master that was switched away from cannot
    write even if it never heard of the switch.
    """

    #: the front-end hosts (a switch picks the master's successor among them)
    hosts: list[HostName] = Field(min_length=2)
    #: the HTTP port every front end listens on
    port: int = Field(default=8446, ge=1, le=65535)
    #: how long the old master of a planned switch redirects clients to the new one beyond the
    #: alias TTL (clients keep the old address for up to the TTL)
    redirect_margin_s: int = Field(default=5, ge=0, le=3600)
    #: an automatic switch (started by an alert) says "switching ... in N s unless aborted" in
    #: Slack and the Prefect UI and waits this long for an abort (0: it switches at once)
    countdown_s: int = Field(default=30, ge=0, le=3600)
    #: a second automatic switch of the service within this period waits for a human's
    #: approval (anti-flapping)
    block_s: int = Field(default=3600, ge=0, le=7 * 86400)
    #: a node of the Pacemaker cluster that watches the front ends, where its maintenance mode
    #: is asked (`commands.cluster_maintenance`); in maintenance, an automatic switch only
    #: notifies. None: the site declares no cluster
    cluster_host: HostName | None = None
    #: what becomes of the old master's agents: ``none`` (they stay), ``follow`` (a planned
    #: switch moves them to the new master with a clean move; a failover whose master's host
    #: does not answer moves them with an emergency move)
    move_agents: Literal["none", "follow"] = "none"


class Slack(_Model):
    """Where the procedures post, who may approve, and the credentials (by reference)."""

    channel: Annotated[str, StringConstraints(pattern=r"^[#A-Za-z0-9][A-Za-z0-9._-]{0,79}$")]
    approvers: list[Annotated[str, StringConstraints(pattern=SLACK_USER_RE)]] = Field(
        default_factory=list
    )
    approver_group: Annotated[str, StringConstraints(pattern=r"^S[A-Z0-9]{2,20}$")] | None = None
    two_person_rule: bool = False
    #: who the requesters are in Slack: an OS login (what `handover run` records as the
    #: requester) to its Slack user ID. Under the two-person rule, a run whose requester is
    #: listed here may not be approved by that user; any other run needs two approvers.
    operators: dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")],
        Annotated[str, StringConstraints(pattern=SLACK_USER_RE)],
    ] = Field(default_factory=dict)
    bot_token: SecretRef
    signing_secret: SecretRef
    app_token: SecretRef | None = None


#: ``frontend_down``: the service's web front end failed on a host (the switch's sensor);
#: ``ha_event``: the HA group daemon's election, loss or failure (`infra.hagd.report`): by
#: default it starts nothing and is noted on the host's open incident
AlertKind = Literal[
    "host_down", "service_down", "resource_failed", "frontend_down", "recovered", "ha_event"
]
AlertProcedure = Literal["emergency-move", "switch"]


DEFAULT_AM_KINDS: dict[str, AlertKind] = {"HostDown": "host_down", "FtsAgentDown": "service_down"}
# a failure of an agent host (or of one of its resources) moves its agents; a failure of the
# front end switches the master role and the alias
DEFAULT_ALERT_PROCEDURES: dict[AlertKind, AlertProcedure] = {
    "host_down": "emergency-move",
    "service_down": "emergency-move",
    "resource_failed": "emergency-move",
    "frontend_down": "switch",
}


class BasicAuth(_Model):
    """HTTP basic auth as Alertmanager sends it (`http_config.basic_auth`)."""

    username: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    password: SecretRef


class AlertmanagerIntake(_Model):
    """How the gateway authenticates Alertmanager, and how its alerts map to handover's kinds."""

    bearer_token: SecretRef | None = None
    basic_auth: BasicAuth | None = None
    #: alertname -> kind, for alerts without a `handover_kind` label
    kinds: dict[str, AlertKind] = Field(default_factory=lambda: dict(DEFAULT_AM_KINDS))

    @model_validator(mode="after")
    def _one_auth(self) -> AlertmanagerIntake:
        if (self.bearer_token is None) == (self.basic_auth is None):
            raise ValueError(
                "set exactly one of bearer_token or basic_auth (as in Alertmanager's "
                "webhook_configs[].http_config)"
            )
        return self


class Alerts(_Model):
    """Alert intake (the gateway) and what alerts start.

    Example:
        ``alerts: {webhook_secret: {env: HANDOVER_WEBHOOK_SECRET}, dedup_window_s: 300}``
    """

    #: the HMAC-SHA256 secret of `POST /alerts/webhook` (hooks and generic monitors)
    webhook_secret: SecretRef
    alertmanager: AlertmanagerIntake | None = None
    #: identical alerts for one host within this window start one run; later ones attach to it
    dedup_window_s: float = Field(default=300.0, ge=1, le=86400)
    #: the accepted clock skew of signed requests (replay window)
    signature_window_s: float = Field(default=300.0, ge=10, le=3600)
    max_body_bytes: int = Field(default=65536, ge=1024, le=1048576)
    #: an alert whose event is older than this (a spooled one delivered after an outage) is
    #: recorded, not acted on, unless a fresh probe of its host confirms the failure
    max_age_s: float = Field(default=600.0, ge=10, le=86400)
    #: the incident book shared by every gateway of the site: a reference to the URL of a
    #: PostgreSQL database (postgresql://USER:PASSWORD@HOST:PORT/DATABASE); unset, each gateway
    #: keeps its own book in memory (one gateway)
    incident_store: SecretRef | None = None
    #: what each alert kind starts (`recovered` never starts anything)
    procedures: dict[AlertKind, AlertProcedure] = Field(
        default_factory=lambda: dict(DEFAULT_ALERT_PROCEDURES)
    )

    @model_validator(mode="after")
    def _recovered_starts_nothing(self) -> Alerts:
        if "recovered" in self.procedures:
            raise ValueError("procedures.recovered: a recovered alert never starts a procedure")
        return self


def _check_timezone(name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as UTC or Europe/Zurich"
        ) from None
    return name


class MaintenanceWindow(_Model):
    """A window: it opens at each time the cron expression names (in `timezone`) and lasts
    `duration_s`.

    Example:
        ``{cron: "0 8 * * 2", duration_s: 7200, timezone: Europe/Zurich}`` (Tuesdays 08:00-10:00)
    """

    cron: Annotated[str, StringConstraints(pattern=r"^(\S+\s+){4}\S+$")]
    duration_s: float = Field(gt=0, le=7 * 86400)
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from cronsim import CronSim, CronSimError

        try:
            CronSim(v, dt.datetime(2026, 1, 1))
        except CronSimError as exc:
            raise ValueError(
                f"invalid cron expression {v!r} ({exc}); five fields: minute hour day month "
                "weekday, e.g. '0 8 * * 2'"
            ) from None
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _check_timezone(v)


class Blackout(_Model):
    """Days on which no window opens (a change freeze), from `start` to `end` included, in
    `timezone`.

    Example:
        ``{start: 2026-12-21, end: 2027-01-04, reason: "year-end freeze"}``
    """

    start: dt.date
    end: dt.date
    reason: str = ""
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _check_timezone(v)

    @model_validator(mode="after")
    def _order(self) -> Blackout:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self


class ProcedurePolicy(_Model):
    """Per-procedure policy: approval, its timeout, and the bounds of the procedure's waits."""

    approval: Literal["required", "none"] = "required"
    approval_timeout_s: float = Field(default=900.0, gt=0)
    on_approval_timeout: Literal["reject", "proceed"] = "reject"
    #: which decisions count: ``any`` (a Slack approver's click, or the Prefect UI's form) or
    #: ``gateway`` (only a decision the gateway sealed after checking Slack's signature and the
    #: approver list; a form typed into the Prefect UI is logged and the run keeps waiting)
    approval_via: Literal["any", "gateway"] = "any"
    emergency: bool = False
    drain_timeout_s: float = Field(default=900.0, gt=0)
    #: how long the drained host may stay unreachable before the move gives up on the drain
    #: (and compensates) instead of waiting for `drain_timeout_s`
    drain_host_lost_s: float = Field(default=30.0, gt=0)
    poll_interval_s: float = Field(default=2.0, gt=0)
    step_timeout_s: float = Field(default=120.0, gt=0)
    #: typical duration of one transfer, for downtime estimates (seed 000: 3-4 minutes)
    expected_transfer_s: float = Field(default=210.0, ge=0)
    #: typical time to stop an agent and start it elsewhere, for downtime estimates
    expected_restart_s: float = Field(default=5.0, ge=0)
    #: when the procedure may run: a run outside every window (or in a blackout) is refused
    #: unless forced with a reason; none: any time
    windows: list[MaintenanceWindow] = Field(default_factory=list)
    blackouts: list[Blackout] = Field(default_factory=list)
    #: how long before a window opens its Slack notice (with the plan) goes out
    notice_s: float = Field(default=1800.0, ge=0, le=7 * 86400)
    #: the typical time of one host's step of a rolling upgrade (upgrade, configure, restart,
    #: verify), until the run has measured one: a step that would end after its window closes
    #: is not started
    expected_host_s: float = Field(default=30.0, gt=0)
    #: clean move, pipelined: how much later than the move's start a channel may go Inactive,
    #: so that it goes Inactive when its running transfers are about to end instead of at once
    #: (needs `database.transfer_eta_query`); 0: every channel at once, as seed 000
    cutover_window_s: float = Field(default=0.0, ge=0, le=3600)
    #: clean move, pipelined, with a cut-over window: a channel goes Inactive at the first moment
    #: its running transfers all end within this many seconds (at the window's end at the latest)
    cutover_drain_s: float = Field(default=2.0, gt=0, le=3600)
    #: clean move, pipelined: start each agent on the target before stopping it on the source
    #: (its start waits for the DB lock and takes it the moment the source's agent lets go), when
    #: the wait fits in `agent_lock_wait_s`; false: stop, then start, as seed 000
    hot_standby: bool = True
    #: how long an agent's start waits for its DB lock before it gives up (FTS 2: about a minute)
    agent_lock_wait_s: float = Field(default=60.0, gt=0, le=3600)


class Upgrade(_Model):
    """The rolling upgrade (seed 001): what a scheduled run does and what a failed host means.

    Example:
        ``upgrade: {target_version: "2", on_failure: rollback, batch: 1}``
    """

    #: the version a run installs when it is not given one (a scheduled run); none: such a run
    #: only re-renders the configuration and restarts the agents
    target_version: Version | None = None
    #: what the run does about a host that failed, beside halting: ``halt`` (report and stop),
    #: ``rollback`` (re-install the version it had and restart), ``move`` (move its agents to
    #: their backups)
    on_failure: Literal["halt", "rollback", "move"] = "halt"
    #: hosts upgraded at the same time (Ansible's `serial`)
    batch: int = Field(default=1, ge=1, le=256)
    #: failed hosts the run tolerates before it halts (0: halt at the first)
    max_failures: int = Field(default=0, ge=0)
    #: a host upgraded first, alone
    canary: HostName | None = None
    #: after the canary, ask a human before the other hosts
    approve_after_canary: bool = False


# --- the lab ------------------------------------------------------------------------------------


class TransferProfile(_Model):
    """Durations of transfers: a mixture of short and long ones (uniform within each range)."""

    short_s: tuple[float, float] = (0.5, 2.0)
    long_s: tuple[float, float] = (4.0, 8.0)
    long_fraction: float = Field(default=0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _ranges(self) -> TransferProfile:
        for name in ("short_s", "long_s"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name}: need 0 < min <= max, got ({lo}, {hi})")
        return self


class LabTransfers(TransferProfile):
    """Durations of lab transfers, drawn with a fixed seed; channels may have their own profile
    (a transatlantic link carries longer transfers than a local one)."""

    seed: int = 42
    per_channel: dict[str, TransferProfile] = Field(default_factory=dict)

    def profile(self, channel: str) -> TransferProfile:
        """The profile of one channel."""
        return self.per_channel.get(channel, self)


class LabHagd(_Model):
    """The HA group daemon on the lab's front-end hosts (`handover lab up --hagd`): the seed's
    timings in seconds. The group is the front end's; ranks follow `frontend.hosts` (first
    highest)."""

    port: int = Field(default=3333, ge=1024, le=65535)
    dt1_s: float = Field(default=2.0, gt=0, le=60)
    dt2_s: float = Field(default=1.0, ge=0, le=60)
    interval_s: float = Field(default=0.3, gt=0, le=10)
    check_s: float = Field(default=1.0, ge=0, le=60)
    timeout_s: float = Field(default=10.0, gt=0, le=120)

    @model_validator(mode="after")
    def _heartbeats(self) -> LabHagd:
        if self.interval_s * 3 > self.dt1_s:
            raise ValueError(
                f"interval_s: {self.interval_s:g} leaves fewer than 3 heartbeats in dt1_s "
                f"({self.dt1_s:g}); lower interval_s or raise dt1_s"
            )
        return self


class Lab(_Model):
    """How the lab simulates this site on one machine (only for lab sites)."""

    state_dir: Path
    db_address: str = "127.0.0.1"
    db_port: int = Field(default=55432, ge=1024, le=65535)
    lock_wait_s: float = Field(default=8.0, gt=0, le=600)
    max_active_per_channel: int = Field(default=4, ge=1, le=1000)
    jobs_per_second_per_channel: float = Field(default=1.0, ge=0, le=100)
    #: jobs the lab's clients submit through the service alias each second (sites with a
    #: `frontend:`; `infra/lab/clients.py`)
    clients_per_second: float = Field(default=4.0, ge=0, le=200)
    load_on_start: bool = True
    tick_s: float = Field(default=0.2, gt=0, le=5)
    transfers: LabTransfers = Field(default_factory=LabTransfers)
    hagd: LabHagd = Field(default_factory=LabHagd)


# --- the site -----------------------------------------------------------------------------------


class Site(_Model):
    """A whole site: the root of a site file."""

    site: HostName
    description: str = ""
    hosts: list[Host] = Field(min_length=1)
    service: Service
    commands: Commands = Field(default_factory=Commands)
    ssh: SshConfig
    database: Database | None = None
    dns: Dns | None = None
    frontend: Frontend | None = None
    slack: Slack | None = None
    alerts: Alerts | None = None
    upgrade: Upgrade = Field(default_factory=Upgrade)
    procedures: dict[str, ProcedurePolicy] = Field(default_factory=dict)
    lab: Lab | None = None

    @model_validator(mode="after")
    def _invariants(self) -> Site:
        problems = self.invariant_problems()
        if problems:
            raise InvariantError(problems)
        return self

    def invariant_problems(self) -> list[Problem]:
        """Check what single fields cannot: references between fields and consistent bounds
        (`config.invariants`)."""
        from config.invariants import site_problems

        return site_problems(self)

    # --- lookups -------------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        """The host called `name`.

        Raises:
            KeyError: with the known host names.
        """
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in site {self.site}; hosts: {self.host_names()}")

    def host_names(self) -> str:
        """Comma-separated host names, for messages."""
        return ", ".join(h.name for h in self.hosts)

    def agent(self, name: str) -> Agent:
        """The agent called `name` (KeyError if none)."""
        for a in self.service.agents:
            if a.name == name:
                return a
        raise KeyError(f"no agent {name!r} in site {self.site}")

    def agents_on(self, host: str) -> list[Agent]:
        """Agents whose primary host is `host`, in file order."""
        return [a for a in self.service.agents if a.primary == host]

    def agents_configured_on(self, host: str) -> list[Agent]:
        """Agents that may run on `host` (as primary or backup)."""
        return [a for a in self.service.agents if host in (a.primary, a.backup)]

    @property
    def channels(self) -> list[str]:
        """All channels served by the site's channel agents."""
        return [a.channel for a in self.service.agents if a.channel is not None]

    def policy(self, procedure: str) -> ProcedurePolicy:
        """The policy for a procedure, or the default policy."""
        return self.procedures.get(procedure, ProcedurePolicy())
