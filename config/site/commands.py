"""The command profile: the argv templates of every verb done on a host, and their checks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    StringConstraints,
    model_validator,
)

from config.site.base import DISABLED_ABSENT, SiteModel

ArgvTemplate = list[Annotated[str, StringConstraints(min_length=1)]]

#: The placeholders each command template may use (all values are validated names).
COMMAND_PLACEHOLDERS: dict[str, frozenset[str]] = {
    "list_processes": frozenset(),
    "channel_state": frozenset({"channel"}),
    "set_channel_state": frozenset({"channel", "state"}),
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


class Commands(SiteModel):
    """The command profile: how each verb is done on a host (the FTS 2 agents' commands by default).

    Each command is an argv template; a placeholder (``{channel}``, ``{state}``, ``{agent}``)
    must be a whole word, so a value can never change the shape of the command.
    """

    #: lists every process with its PID, user, elapsed time and arguments (the snapshot parses
    #: it; the elapsed time, `ps`'s ``etime``, is optional: it gives the running transfers' ages)
    list_processes: ArgvTemplate = ["ps", "-eo", "pid=,user=,etime=,args="]
    #: prints a channel's state (`channel_state_regex` reads it)
    channel_state: ArgvTemplate = ["glite-transfer-channel-list", "{channel}"]
    #: the first group is the channel's state (`Active`, `Inactive`...)
    channel_state_regex: str = r"State:\s*(\w+)"
    #: sets a channel's state
    set_channel_state: ArgvTemplate = ["glite-transfer-channel-set", "-S", "{state}", "{channel}"]
    #: stops every agent of the host
    stop_all: ArgvTemplate = ["service", "transfer-agents", "stop"]
    #: starts one agent
    start_agent: ArgvTemplate = ["service", "transfer-agents", "start", "--instance", "{agent}"]
    #: stops one agent
    stop_agent: ArgvTemplate = ["service", "transfer-agents", "stop", "--instance", "{agent}"]
    #: the web front end: its role and epoch as one JSON line (`tasks.frontend`)
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
    #: rolling upgrade: install a version of the agents' software (SPMA)
    upgrade: ArgvTemplate = ["spma_wrapper.sh", "--version", "{version}"]
    #: rolling upgrade: re-render the agents' configuration from the site-info file (YAIM); its
    #: output (the changes) is kept in the run
    configure: ArgvTemplate = [
        "/opt/glite/yaim/scripts/configure_node",
        "/opt/glite/yaim/etc/site-info.def",
        "FTA",
    ]
    #: rolling upgrade: restart every agent of the host; running transfers continue
    restart: ArgvTemplate = ["service", "transfer-agents", "restart"]
    #: the installed version: the first group of `installed_version_regex` in its output
    installed_version: ArgvTemplate = ["rpm", "-q", "glite-data-transfer-agents"]
    #: the first group is the installed version
    installed_version_regex: str = r"^glite-data-transfer-agents-([^-\s]+)-"
    #: each running agent, one line each, parsed by `agent_status_regex` (named groups:
    #: ``agent`` required; ``state``, ``version``, ``config`` and ``down`` (seconds down at its
    #: last restart) used when the init script reports them)
    agents_status: ArgvTemplate = ["service", "transfer-agents", "status"]
    #: one agent's status line (named groups: see `agents_status`)
    agent_status_regex: str = (
        r"^(?P<agent>\S+) \(pid \d+\) is running \((?P<state>[\w-]+)"
        r"(?:, version (?P<version>\S+), config (?P<config>\w+))?"
        r"(?:, down (?P<down>[\d.]+) s at its last restart)?\)"
    )
    #: an agent that is not running although it was not stopped (it failed, or died), one line
    #: each in the output of `agents_status` (named groups: ``agent``, and ``reason`` when the
    #: init script gives one); an agent not running with no such line was stopped cleanly
    agent_dead_regex: str = r"^(?P<agent>\S+) is dead(?: \((?P<reason>.*)\))?$"
    #: the file listing the agents the host's init scripts must not start
    disabled_file: Path = Path("/etc/glite-data-transfer-agents.disabled")
    #: the first group is an agent's name, in a process's arguments
    agent_process_regex: str = r"^(glite-transfer-(?:channel-agent-urlcopy|vo-agent)-\S+)"
    #: a transfer process's arguments: the first group is its channel
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
