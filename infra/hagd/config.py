"""The HA group daemon's configuration: its keys, checked at load like a site file.

Example (YAML)::

    id: fts101                  # this provider's unique id (default: the host name)
    address: 127.0.1.1          # where it listens and sends from
    port: 3333                  # UDP, the default
    peers: {fts102: 127.0.1.2}  # the other members and their addresses: unicast to these
                                # (where broadcast does not work); a heartbeat is accepted only
                                # from the address listed for the member it names ...
    iface: []                   # ... and/or broadcast on these interfaces
    group: {fts-frontend: 30, fts-agents: 10}   # groups and this provider's rank in each
    script: /usr/local/sbin/fts-frontend-ha   # SCRIPT start|stop|status GROUP
    timeout: 10                 # seconds the script may take; a hang is a failed start
    debug: 2                    # 0-5
    key: {file: /etc/handover/hagd.key}       # the shared key, never in a message
    dt1: 3                      # a member not heard for dT1 is dead
    dt2: 2                      # takeover announced for dT2 before the service starts
    interval: 0.5               # heartbeat period (below dT1 / 3)
    skew: 0.25                  # how far apart the members' clocks may be (at most dT1 / 2)
    control: /run/hagd.sock     # where `handover hagd status|takeover|giveup` ask
    preempt: false              # a returning higher rank takes the group back
    check: 2                    # the master runs `SCRIPT status GROUP` this often (0: never)
    check_failures: 2           # ... and gives up when this many fail in a row
    report: /etc/handover/hooks.env   # elections and losses go to the gateway (hooks' settings)
    watch: [fts-agents]         # groups whose members only watch each other: no script runs,
                                # and a member lost is reported as `host_down` (its host's
                                # procedure for a lost host starts: the agents' emergency move)
    pool:                       # stateless pools among the groups: a round-robin name each
      bdii:
        address: 192.0.2.11     # where this provider's service answers (default: address)
        addresses: {fts102: 192.0.2.12}   # the one address each other member may put in the
                                # name (default: its address in `peers`; needed without peers)
        dns: {server: 192.0.2.53, zone: example.org, alias: bdii.example.org, ttl_s: 60,
              tsig_key_name: hagd, tsig_key: {file: /etc/handover/tsig.key}}
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from config.site import Dns, SecretRef

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IPv4 address (give the address, not a name)"
        ) from None


#: an IPv4 address, written the way the kernel reports a datagram's source
IPv4 = Annotated[str, AfterValidator(_ipv4)]


class PoolConfig(BaseModel):
    """A stateless pool group's round-robin name (`infra.hagd.pool`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the name (`alias`), its zone's primary and the TSIG key, as a site file's `dns:`
    dns: Dns
    #: where this provider's service answers (default: the daemon's `address`)
    address: IPv4 | None = None
    #: the one address each other member may advertise for the name (default: its `peers`
    #: address); a member advertising another one is not put in the name
    addresses: dict[Name, IPv4] = Field(default_factory=dict)


class HagdConfig(BaseModel):
    """One provider's daemon (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Name = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "provider")
    address: str = "0.0.0.0"  # noqa: S104 - a provider listens where its group can reach it
    port: int = Field(default=3333, ge=1, le=65535)
    #: the other members (id -> address): heartbeats go there, and come only from there
    peers: dict[Name, IPv4] = Field(default_factory=dict)
    iface: list[Name] = Field(default_factory=list)
    group: dict[Name, int] = Field(min_length=1)
    #: the groups' service script (every group but the `watch` ones has one)
    script: Path | None = None
    timeout: float = Field(default=10.0, gt=0, le=600)
    debug: int = Field(default=2, ge=0, le=5)
    key: SecretRef
    dt1: float = Field(default=3.0, gt=0, le=600)
    dt2: float = Field(default=2.0, ge=0, le=600)
    interval: float = Field(default=0.5, gt=0, le=60)
    #: how far apart the members' clocks may be (`infra.hagd.protocol`, **Time**)
    skew: float = Field(default=0.25, ge=0, le=300)
    control: Path = Path("/run/hagd.sock")
    preempt: bool = False
    check: float = Field(default=2.0, ge=0, le=3600)
    check_failures: int = Field(default=2, ge=1, le=100)
    report: Path | None = None
    pool: dict[Name, PoolConfig] = Field(default_factory=dict)
    #: groups whose members only watch each other (the agents' hosts): an election runs, but
    #: no script; a member not heard for dT1 is reported as a `host_down` alert about its host
    #: instead of an `ha_event`, so the gateway starts the site's procedure for a lost host
    watch: list[Name] = Field(default_factory=list)

    def pool_address(self, group: str) -> str:
        """Where this provider serves a pool group."""
        return self.pool[group].address or self.address

    def pool_allowed(self, group: str) -> dict[str, str]:
        """The address each other member may advertise for a pool group (id -> address)."""
        allowed = {**self.peers, **self.pool[group].addresses}
        allowed.pop(self.id, None)
        return allowed

    @field_validator("peers", mode="before")
    @classmethod
    def _peers_by_id(cls, value: Any) -> Any:
        if isinstance(value, list):
            raise ValueError(
                "give each member's id with its address, e.g. {fts102: 127.0.1.2} instead of "
                "[127.0.1.2]: a heartbeat is accepted only from the address listed for the "
                "member it names"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> HagdConfig:
        served = [g for g in self.group if g not in self.watch]
        if self.script is None and served:
            raise ValueError(
                f"script: give the service script of group {served[0]} (only `watch` groups "
                "run none)"
            )
        if self.script is not None and not self.script.is_absolute():
            raise ValueError(f"script: {self.script} must be an absolute path")
        for g in self.watch:
            if g not in self.group:
                raise ValueError(f"watch: {g} is not in `group`; give it a rank there")
            if g in self.pool:
                raise ValueError(f"watch: {g} is a pool; a group is one or the other")
        if self.watch and self.report is None:
            raise ValueError(
                "report: a watch group reports its lost members to the gateway; give the "
                "hooks' settings file (report: /etc/handover/hooks.env)"
            )
        if self.interval * 3 > self.dt1:
            raise ValueError(
                f"interval: {self.interval:g} s leaves fewer than 3 heartbeats in dT1 "
                f"({self.dt1:g} s): one lost datagram would make a member dead; lower interval "
                "or raise dt1"
            )
        if self.skew * 2 > self.dt1:
            raise ValueError(
                f"skew: {self.skew:g} s is more than half of dT1 ({self.dt1:g} s): a dead member "
                "would be seen alive up to dT1 + 2 skew after its last heartbeat; keep the "
                "clocks in step (NTP) and lower skew, or raise dt1"
            )
        if self.id in self.peers:
            raise ValueError(f"peers.{self.id}: this provider's own id; list the other members")
        if 0 < self.check < self.interval:
            raise ValueError(
                f"check: {self.check:g} s is shorter than the heartbeat interval "
                f"({self.interval:g} s); use at least the interval, or 0 for no status checks"
            )
        if self.report is not None and not self.report.is_absolute():
            raise ValueError(f"report: {self.report} must be an absolute path")
        if not self.peers and not self.iface:
            raise ValueError(
                "peers/iface: give the peers' addresses, or interfaces to broadcast on"
            )
        for g, p in self.pool.items():
            if g not in self.group:
                raise ValueError(f"pool.{g}: not in `group`; give it a rank there")
            if (p.address or self.address) in ("0.0.0.0", ""):  # noqa: S104
                raise ValueError(
                    f"pool.{g}.address: give the address this provider's service answers on "
                    "(the daemon's `address` is 0.0.0.0)"
                )
            if not self.peers and not p.addresses:
                raise ValueError(
                    f"pool.{g}.addresses: give the address each member may put in the name "
                    "({id: address}): without `peers` nothing says which address is whose"
                )
            for mid, addr in p.addresses.items():
                if mid == self.id and addr != self.pool_address(g):
                    raise ValueError(
                        f"pool.{g}.addresses.{mid}: {addr}, but this provider serves at "
                        f"{self.pool_address(g)} (pool.{g}.address or address); make them agree"
                    )
                if self.peers and mid != self.id and mid not in self.peers:
                    raise ValueError(
                        f"pool.{g}.addresses.{mid}: not in `peers`, so its heartbeats are "
                        f"dropped; add it to peers ({mid}: ADDRESS) or remove it here"
                    )
        if self.pool and self.check <= 0:
            raise ValueError("check: a pool needs status checks (check > 0)")
        for g, rank in self.group.items():
            if not 0 <= rank <= 1_000_000:
                raise ValueError(f"group.{g}: rank {rank} is not between 0 and 1000000")
        return self


class HagdConfigError(ValueError):
    """The configuration file is malformed; the message names the field and the fix."""


def load_config(path: str | Path) -> HagdConfig:
    """Read and check a configuration file.

    Raises:
        HagdConfigError: the file cannot be read, is not YAML, or a field is wrong.
    """
    from pydantic import ValidationError

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise HagdConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise HagdConfigError(
            f"{path}: not a mapping of the daemon's keys (port, group, script, ...)"
        )
    try:
        return HagdConfig.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"  - {'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}"
            for e in exc.errors()
        ]
        raise HagdConfigError(f"{path}: {len(lines)} problem(s)\n" + "\n".join(lines)) from None
