"""What `handover lab status` and `handover lab score` report (typed views of the lab)."""

from __future__ import annotations

from pydantic import BaseModel

# --- typed views --------------------------------------------------------------------------------


class AgentView(BaseModel):
    """An agent process on a host, as seen from outside."""

    name: str
    pid: int
    user: str
    state: str
    #: the software version and configuration digest it started with (`infra.lab.software`)
    version: str = ""
    config: str = ""


class HostView(BaseModel):
    """One lab host."""

    name: str
    address: str
    port: int
    up: bool
    fault: str | None
    sshd: bool
    agents: list[AgentView]
    transfers: dict[str, int]
    disabled: list[str]
    processes: int


class ChannelView(BaseModel):
    """One channel's state in the lab database."""

    state: str
    pending: int
    active: int


class DnsView(BaseModel):
    """What one of the lab's DNS servers answers for the service alias."""

    server: str
    role: str
    addresses: list[str]
    epoch: int | None
    serial: int | None
    error: str | None = None


class FrontendView(BaseModel):
    """One front-end host: its role file and whether its server runs."""

    host: str
    role: str | None
    epoch: int | None
    running: bool
    redirect: str | None = None


class ClientScore(BaseModel):
    """What the lab's clients saw (sites with a front end; `infra/lab/clients.py`)."""

    accepted: int
    refused: int
    failed: int
    waiting: int
    lost: int
    outages: int
    outage_max_s: float
    outage_last_s: float
    #: submissions written with an epoch older than one already begun (must stay 0)
    writes_by_fenced_master: int
    #: the database's epoch and who claimed it
    epoch: int
    epoch_holder: str


class LabStatus(BaseModel):
    """`handover lab status`."""

    site: str
    site_file: str
    up: bool
    database: str
    labd: bool
    hosts: list[HostView]
    channels: dict[str, ChannelView]
    #: the database server's fault (`handover lab db-fault`), if any
    database_fault: str | None = None
    dns: list[DnsView] = []
    frontends: list[FrontendView] = []


class TwiceView(BaseModel):
    """An interval during which one agent was seen on two hosts."""

    agent: str
    hosts: list[str]
    first_seen: str
    last_seen: str


class Score(BaseModel):
    """`handover lab score`: what happened to the work since the lab started or the last reset."""

    since: str
    jobs: dict[str, int]
    jobs_done: int
    jobs_lost: int
    downtime_s: dict[str, float]
    downtime_total_s: float
    downtime_max_s: float
    agents_running_twice: list[TwiceView]
    agents_alive_on_two_hosts: list[TwiceView]
    clients: ClientScore | None = None
    #: per agent, how long it was down across each restart on the same host (seconds: from the
    #: old instance's end to the new one's start, as the database recorded them)
    restart_gaps_s: dict[str, list[float]] = {}
    #: transfers started since, by the software version of the agent that started them
    transfers_by_version: dict[str, int] = {}
