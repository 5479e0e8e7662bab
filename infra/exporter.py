"""`handover exporter`: the service's sensors as Prometheus metrics (``/metrics``).

A background thread reads the sensors (`tasks.sensors.read_sensors`, bounded in time) every
`interval_s`; a scrape answers at once from the last reading and never waits for a host. Metrics
(labels ``site``, ``host``, and ``agent``, ``channel``, ``vo`` where they apply):

* ``handover_host_up``: the host answered the snapshot's SSH commands;
* ``handover_agent_running`` / ``handover_agent_serving``: the agent's process runs on the host /
  it serves (its init script says ``serving``); one series per agent and host it may run on;
* ``handover_channel_serving_agents``: per channel (and VO), how many hosts serve it (1 is
  right, 0 is downtime, 2 is an agent running twice);
* ``handover_channel_active``: the channel's state is Active;
* ``handover_transfer_processes``: transfer processes per channel and host (the components
  sensor: what the GridFTP processes were);
* ``handover_transfers_started_per_second``: per channel, new transfer processes seen between
  two readings over the time between them (the capacity metric);
* ``handover_frontend_master`` / ``handover_frontend_answers`` / ``handover_frontend_epoch``:
  each front end's role, health and epoch; ``handover_database_reachable``: the front end reads
  the database;
* ``handover_sensor_read_seconds``, ``handover_sensor_age_seconds``,
  ``handover_sensor_errors``: the reading's own cost, age and what it could not read;
* with `runs` (the Prefect API of the process): ``handover_runs`` (the procedures' runs of the
  last 24 hours by procedure and state), ``handover_approvals_waiting`` (runs paused for a
  decision, by procedure), ``handover_workers_online`` (per work pool of the procedures'
  deployments, its online workers) (`tasks.run_counts`), and ``handover_prefect_api_up`` (the
  API answered the last reading): handover's own health, which the shipped rules page on.

Access: the exporter binds 127.0.0.1 unless told otherwise. With a token file
(`read_token`), every request must carry ``Authorization: Bearer <token>`` (Prometheus'
``authorization: {type: Bearer, credentials_file: ...}``) and any other gets 401; without one it
serves loopback only (`exporter_token` refuses another address).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from config.private_files import SecretError, read_secret_file
from config.site import Site
from tasks.run_counts import RunCounts
from tasks.sensors import SensorReading

log = logging.getLogger("handover.exporter")


def transfer_ids(reading: SensorReading) -> dict[str, set[str]]:
    """The transfer processes of a reading, per channel (their ids, over every host)."""
    out: dict[str, set[str]] = {}
    if reading.snapshot is None:
        return out
    for h in reading.snapshot.hosts:
        for t in h.transfer_processes:
            out.setdefault(t.channel, set()).add(f"{h.host}/{t.transfer_id}")
    return out


def started_per_second(
    before: SensorReading | None, after: SensorReading, channels: list[str]
) -> dict[str, float]:
    """Per channel, the transfers started between two readings per second (0 without a
    previous reading)."""
    if before is None or before.snapshot is None or after.snapshot is None:
        return dict.fromkeys(channels, 0.0)
    span = (after.taken_at - before.taken_at).total_seconds()
    old, new = transfer_ids(before), transfer_ids(after)
    return {
        c: round(len(new.get(c, set()) - old.get(c, set())) / span, 4) if span > 0 else 0.0
        for c in channels
    }


def run_families(site: Site, counts: RunCounts) -> list[GaugeMetricFamily]:
    """handover's own metrics from the Prefect API's runs (pure)."""
    runs = GaugeMetricFamily(
        "handover_runs",
        f"The procedures' runs of the last {counts.window_s:g} s, by their state now",
        labels=["site", "procedure", "state"],
    )
    for procedure, states in sorted(counts.runs.items()):
        for state, n in sorted(states.items()):
            runs.add_metric([site.site, procedure, state], float(n))
    waiting = GaugeMetricFamily(
        "handover_approvals_waiting",
        "Runs paused for a human decision (an approval), by procedure",
        labels=["site", "procedure"],
    )
    for procedure, n in sorted(counts.waiting.items()):
        waiting.add_metric([site.site, procedure], float(n))
    workers = GaugeMetricFamily(
        "handover_workers_online",
        "Workers online in each work pool of the procedures' deployments",
        labels=["site", "pool"],
    )
    for pool, n in sorted(counts.workers.items()):
        workers.add_metric([site.site, pool], float(n))
    return [runs, waiting, workers]


def api_family(site: Site, up: bool) -> GaugeMetricFamily:
    """``handover_prefect_api_up``: the Prefect API answered the exporter's last reading of the
    runs (pure)."""
    api = GaugeMetricFamily(
        "handover_prefect_api_up",
        "The Prefect API answered the last reading of the procedures' runs",
        labels=["site"],
    )
    api.add_metric([site.site], 1.0 if up else 0.0)
    return api


def families(
    site: Site, reading: SensorReading, rates: dict[str, float], now: float
) -> list[GaugeMetricFamily]:
    """The metric families of one reading (pure)."""
    s = site.site

    def g(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=["site", *labels])

    host_up = g("handover_host_up", "The host answered the snapshot's SSH commands", ["host"])
    running = g(
        "handover_agent_running",
        "The agent's process runs on the host",
        ["host", "agent", "channel", "vo"],
    )
    serving = g(
        "handover_agent_serving",
        "The agent serves on the host (its init script says so)",
        ["host", "agent", "channel", "vo"],
    )
    per_channel = g(
        "handover_channel_serving_agents",
        "Hosts serving the channel's (or VO's) agent: 1 right, 0 down, 2 twice",
        ["agent", "channel", "vo"],
    )
    active = g("handover_channel_active", "The channel's state is Active", ["channel"])
    transfers = g(
        "handover_transfer_processes",
        "Transfer processes of the channel on the host",
        ["host", "channel"],
    )
    rate = g(
        "handover_transfers_started_per_second",
        "Transfers started per second over the last two readings (capacity)",
        ["channel"],
    )
    fe_master = g("handover_frontend_master", "The front end is the master", ["host"])
    fe_answers = g("handover_frontend_answers", "The front end's server answers", ["host"])
    fe_epoch = g("handover_frontend_epoch", "The front end's service epoch", ["host"])
    db_up = g("handover_database_reachable", "The front end reads the database", ["host"])
    snap = reading.snapshot
    for h in site.hosts:
        hs = snap.host(h.name) if snap is not None and snap.has(h.name) else None
        host_up.add_metric([s, h.name], 1.0 if hs is not None and hs.reachable else 0.0)
        if hs is not None and hs.reachable:
            for channel, n in sorted(hs.transfers.items()):
                transfers.add_metric([s, h.name, channel], float(n))
    for a in site.service.agents:
        labels = [a.name, a.channel or "", a.vo or ""]
        n = 0
        for host in (a.primary, a.backup):
            hs = snap.host(host) if snap is not None and snap.has(host) else None
            runs = hs is not None and hs.reachable and hs.runs(a.name)
            state = reading.agent_states.get(host, {}).get(a.name)
            serves = runs and state in ("serving", "running")
            n += int(serves)
            running.add_metric([s, host, *labels], float(runs))
            serving.add_metric([s, host, *labels], float(serves))
        per_channel.add_metric([s, *labels], float(n))
    if snap is not None:
        for channel, state in sorted(snap.channels.items()):
            active.add_metric([s, channel], 1.0 if state == "Active" else 0.0)
    for channel, r in sorted(rates.items()):
        rate.add_metric([s, channel], r)
    for f in reading.frontends:
        fe_master.add_metric([s, f.host], 1.0 if f.serving_master else 0.0)
        fe_answers.add_metric([s, f.host], 1.0 if f.answers else 0.0)
        if f.epoch is not None:
            fe_epoch.add_metric([s, f.host], float(f.epoch))
        if f.reachable:
            db_up.add_metric([s, f.host], 0.0 if f.db_error or f.db_epoch is None else 1.0)
    took = g("handover_sensor_read_seconds", "How long the last reading took", [])
    took.add_metric([s], reading.duration_s)
    age = g("handover_sensor_age_seconds", "Seconds since the last reading began", [])
    age.add_metric([s], round(now - reading.taken_at.timestamp(), 3))
    errors = g("handover_sensor_errors", "What the last reading could not read", [])
    errors.add_metric([s], float(len(reading.errors)))
    return [
        *geo_families(site, reading),
        host_up,
        running,
        serving,
        per_channel,
        active,
        transfers,
        rate,
        fe_master,
        fe_answers,
        fe_epoch,
        db_up,
        took,
        age,
        errors,
    ]


def geo_families(site: Site, reading: SensorReading) -> list[GaugeMetricFamily]:
    """The replicated tools' metrics of one reading (pure; none for a site without `geo:`)."""
    if site.geo is None:
        return []
    s = site.site

    def g(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=["site", *labels])

    active = g("handover_geo_active", "The tool's names point at this site", ["tool", "geo_site"])
    epoch = g("handover_geo_epoch", "The newest epoch the masters answer for the tool", ["tool"])
    db_up = g("handover_geo_database_up", "The site's database answers", ["tool", "geo_site"])
    writable = g(
        "handover_geo_database_writable",
        "The site's database is writable (1 at the active site only)",
        ["tool", "geo_site"],
    )
    running = g(
        "handover_replication_running",
        "Both replication threads of the site's replica run",
        ["tool", "geo_site"],
    )
    lag = g(
        "handover_replication_lag_seconds",
        "Seconds the site's replica is behind, as it reports them",
        ["tool", "geo_site"],
    )
    behind = g(
        "handover_replication_behind_transactions",
        "Transactions of the primary the site's replica has not applied",
        ["tool", "geo_site"],
    )
    error = g(
        "handover_replication_error",
        "The site's replica reports an error (its text is in `handover status`)",
        ["tool", "geo_site"],
    )
    serving = g(
        "handover_geo_tool_serving", "The site's health page answers 200", ["tool", "geo_site"]
    )
    max_lag = g(
        "handover_geo_max_lag_seconds",
        "The tool's max_lag_s: the loss window a failover accepts without asking",
        ["tool"],
    )
    master_up = g(
        "handover_geo_master_up",
        "The DNS master answers (signed) for the tool's names",
        ["tool", "geo_site", "master"],
    )
    master_behind = g(
        "handover_geo_master_behind",
        "The DNS master answers an older epoch or another address than the newest",
        ["tool", "geo_site", "master"],
    )
    for t in site.geo.tools:
        max_lag.add_metric([s, t.name], t.max_lag_s)
    for st in reading.geo:
        if st.epoch is not None:
            epoch.add_metric([s, st.tool], float(st.epoch))
        for gs, db in st.snapshot.databases.items():
            active.add_metric([s, st.tool, gs], 1.0 if gs == st.active_site else 0.0)
            db_up.add_metric([s, st.tool, gs], 1.0 if db.reachable else 0.0)
            if db.reachable:
                writable.add_metric([s, st.tool, gs], 1.0 if db.read_only is False else 0.0)
            if db.is_replica:
                running.add_metric([s, st.tool, gs], 1.0 if db.replicating else 0.0)
                error.add_metric([s, st.tool, gs], 1.0 if db.last_error else 0.0)
        for r in st.lags:
            if r.seconds is not None:
                lag.add_metric([s, st.tool, r.site], r.seconds)
            if r.transactions is not None:
                behind.add_metric([s, st.tool, r.site], float(r.transactions))
        for gs, h in st.snapshot.health.items():
            serving.add_metric([s, st.tool, gs], 1.0 if h.serving else 0.0)
        seen: set[str] = set()
        late = {b.split(" ")[1] for b in st.masters_behind}
        for a in st.snapshot.names:
            if a.master in seen:
                continue
            seen.add(a.master)
            mine = [x for x in st.snapshot.names if x.master == a.master]
            master_up.add_metric(
                [s, st.tool, a.site, a.master], 0.0 if any(x.error for x in mine) else 1.0
            )
            master_behind.add_metric(
                [s, st.tool, a.site, a.master], 1.0 if a.master in late else 0.0
            )
    return [
        active,
        epoch,
        db_up,
        writable,
        running,
        lag,
        behind,
        error,
        serving,
        max_lag,
        master_up,
        master_behind,
    ]


class SensorCollector(Collector):
    """Reads the sensors in a thread; a scrape gets the last reading's families."""

    def __init__(
        self, site: Site, interval_s: float = 15.0, timeout_s: float = 20.0, runs: bool = False
    ) -> None:
        self.site = site
        self.runs = runs
        self.run_counts: RunCounts | None = None
        #: whether the Prefect API answered the last reading of the runs (None: not read yet)
        self.api_up: bool | None = None
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.reading: SensorReading | None = None
        self.rates: dict[str, float] = dict.fromkeys(site.channels, 0.0)
        self.readings = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sensors", daemon=True)

    def start(self) -> SensorCollector:
        """Start reading in the background."""
        self._thread.start()
        return self

    def wait_first(self, timeout_s: float) -> bool:
        """Wait for the first reading (True when there is one)."""
        return self._ready.wait(timeout_s)

    def stop(self) -> None:
        """Stop reading (the current reading ends with its SSH timeouts)."""
        self._stop.set()

    def _loop(self) -> None:
        from tasks.remote import SiteShell
        from tasks.sensors import read_sensors

        with SiteShell(self.site) as shell:
            while not self._stop.is_set():
                try:
                    reading = read_sensors(shell, self.timeout_s)
                except Exception as exc:  # a failed reading is retried at the next interval
                    log.warning("the sensors could not be read: %r", exc, exc_info=True)
                else:
                    self.rates = started_per_second(self.reading, reading, self.site.channels)
                    self.reading = reading
                    self.readings += 1
                    self._ready.set()
                if self.runs:
                    from tasks.run_counts import read_run_counts

                    try:
                        self.run_counts = read_run_counts()
                        self.api_up = True
                    except Exception as exc:  # noqa: BLE001 - the Prefect API may be away: retried
                        self.api_up = False
                        log.warning("the runs could not be read from Prefect: %r", exc)
                self._stop.wait(self.interval_s)

    def collect(self) -> Iterator[Any]:
        """The families of the last reading (nothing before the first)."""
        if self.reading is not None:
            yield from families(self.site, self.reading, self.rates, time.time())
        if self.run_counts is not None:
            yield from run_families(self.site, self.run_counts)
        if self.api_up is not None:
            yield api_family(self.site, self.api_up)


#: the shortest token the exporter accepts (as the gateway's secrets)
MIN_TOKEN_CHARS = 16
#: what a token may hold: printable ASCII without spaces (it travels in an HTTP header)
TOKEN_RE = re.compile(r"[\x21-\x7e]+")
#: the client addresses whose first refusal was logged (bounded: a scan must not grow it)
MAX_LOGGED_PEERS = 256

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ExporterError(RuntimeError):
    """The exporter cannot start as asked; the message says what to fix."""


def is_loopback(address: str) -> bool:
    """Whether `address` (an IP address or a name) means loopback only: every address it
    resolves to is in 127.0.0.0/8 or ``::1``. ``0.0.0.0``, ``::`` and ``""`` (every interface)
    are not."""
    if not address.strip():
        return False
    try:
        infos = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos
    )


def read_token(path: Path) -> str:
    """The exporter's bearer token from `path`, once the file is found private
    (`config.private_files.read_secret_file`: yours or root's, closed to everyone else).

    The file holds the token alone (surrounding whitespace is ignored, as Prometheus ignores it
    in ``credentials_file``).

    Raises:
        ExporterError: the file is missing, unfit, or its token empty, short or not printable
            ASCII; says the fix.
    """
    path = path.absolute()
    try:
        token = read_secret_file(path, f"--token-file {path}")
    except SecretError as exc:
        raise ExporterError(str(exc)) from None
    fix = (
        f"put a random token of at least {MIN_TOKEN_CHARS} characters in it, e.g. "
        f"`openssl rand -hex 32 > {shlex.quote(str(path))}`, and the same in Prometheus' "
        "credentials_file"
    )
    if len(token) < MIN_TOKEN_CHARS:
        raise ExporterError(
            f"--token-file {path}: the token is {'empty' if not token else 'too short'}: {fix}"
        )
    if not TOKEN_RE.fullmatch(token):
        raise ExporterError(
            f"--token-file {path}: the token holds spaces or characters outside printable "
            f"ASCII, which an HTTP header cannot carry: {fix}"
        )
    return token


def exporter_token(address: str, token_file: Path | None) -> str | None:
    """The token the exporter requires (None: it serves without one, on loopback only).

    Raises:
        ExporterError: the token file is unfit (`read_token`), or `address` is not loopback and
            there is no token file.
    """
    if token_file is not None:
        return read_token(token_file)
    if not is_loopback(address):
        raise ExporterError(
            f"--address {address or '(every interface)'} is not a loopback address and there is "
            "no --token-file: anyone who reaches the port would read the site's metrics. Give "
            f"--token-file FILE (a random token of at least {MIN_TOKEN_CHARS} characters, mode "
            "0600; Prometheus sends the same with `authorization: {type: Bearer, "
            "credentials_file: FILE}`), or bind 127.0.0.1 (the default)"
        )
    return None


def require_bearer(app: WsgiApp, token: str) -> WsgiApp:
    """`app` behind a bearer token: a request without ``Authorization: Bearer <token>`` gets
    401 and never reaches `app`. The comparison takes the same time whatever the token sent."""
    expected = hashlib.sha256(token.encode()).digest()
    logged: set[str] = set()

    def guarded(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        scheme, _, given = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        # WSGI hands headers over as latin-1 strings: this encoding never fails
        digest = hashlib.sha256(given.strip().encode("latin-1")).digest()
        if hmac.compare_digest(digest, expected) and scheme.lower() == "bearer":
            return app(environ, start_response)
        peer = str(environ.get("REMOTE_ADDR", "?"))
        if peer not in logged and len(logged) < MAX_LOGGED_PEERS:
            logged.add(peer)
            log.warning(
                "refused a request from %s: %s (its Prometheus needs `authorization: {type: "
                "Bearer, credentials_file: FILE}` with the exporter's token; later refusals "
                "from there are not logged)",
                peer,
                "a wrong token" if given else "no bearer token",
            )
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("WWW-Authenticate", 'Bearer realm="handover exporter"'),
            ],
        )
        return [b"401 Unauthorized: send the exporter's token (Authorization: Bearer ...)\n"]

    return guarded


class _QuietHandler(WSGIRequestHandler):
    """No access log: Prometheus scrapes every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing."""


def start_server(app: WsgiApp, address: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve `app` on `address`:`port` (IPv4 or IPv6) in a daemon thread.

    Raises:
        OSError: the address does not resolve or the port cannot be bound.
    """
    from prometheus_client.exposition import ThreadingWSGIServer

    family, _, _, _, sockaddr = socket.getaddrinfo(
        address or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    httpd = make_server(str(sockaddr[0]), port, app, Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="exporter-http", daemon=True)
    thread.start()
    return httpd, thread


def serve_exporter(
    site: Site,
    address: str,
    port: int,
    interval_s: float,
    timeout_s: float,
    runs: bool = False,
    token: str | None = None,
) -> None:
    """Serve ``/metrics`` until interrupted; with `token`, to requests that carry it only
    (`require_bearer`). Check the address and token with `exporter_token` first."""
    from prometheus_client import make_wsgi_app
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry()
    collector = SensorCollector(site, interval_s, timeout_s, runs).start()
    registry.register(collector)
    app: WsgiApp = make_wsgi_app(registry)
    if token is not None:
        app = require_bearer(app, token)
    else:
        log.warning(
            "no --token-file: /metrics on %s answers anyone on this machine without a token",
            address,
        )
    server, thread = start_server(app, address, port)
    log.warning(
        "handover exporter: http://%s:%d/metrics (every %g s; %s)",
        address,
        port,
        interval_s,
        "bearer token required" if token is not None else "no token",
    )
    try:
        while thread.is_alive():
            thread.join(1.0)
    finally:
        collector.stop()
        server.shutdown()
