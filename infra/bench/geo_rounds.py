"""What one round of `handover bench geo` does on a bench geo lab (`infra.bench.geo`): a
planned failover, a killed site, one master down, a resolver flood; each returns its figures
(`infra.bench.geo_figures`).

Clients write through the tool's name at `RATE` writes per second in a process of their own
(`infra.lab.geo.clients`), each write resolving the name through a site's caching resolver.
The flows run in this process, without approval. A round that cannot do what it must raises
`RuntimeError` (why, in one sentence).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from infra.bench.geo_figures import (
    FLOOD_MIN_QUERIES,
    FloodRound,
    KilledRound,
    MasterDownRound,
    PlannedRound,
    RoundKind,
    RowName,
    count_flips,
    first_after,
    longest_gap,
    outside_window,
)

if TYPE_CHECKING:  # at run time a round imports them itself: the flood's process never does
    import datetime as dt

    from config.site import DnsServer
    from flows.geo_failover import GeoResult
    from flows.geo_watch import GeoWatchResult
    from infra.lab.geo.clients import Outcome, WriteLoad, WriteLoadProcess
    from infra.lab.geo.lab import GeoLab

    Load = WriteLoad | WriteLoadProcess

#: the clients' writes per second through the tool's name
RATE = 20.0
#: the loss window a killed site's failover accepts without asking
MAX_LAG_S = 30.0
#: the flood's querying threads, and how long a query may go unanswered
FLOOD_THREADS = 8
QUERY_TIMEOUT_S = 2.0


class ThreadCount(TypedDict):
    """What one of the flood's threads sent and was answered."""

    sent: int
    answered: int
    #: queries without an answer within `QUERY_TIMEOUT_S`
    lost: int
    #: its answers in order, each repeat of the previous one left out
    answers: list[str]


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll until `predicate()`; returns the seconds it took.

    Raises:
        RuntimeError: not within `timeout_s`.
    """
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


class BenchLab:
    """A started bench geo lab and what its rounds ask of it."""

    def __init__(self, site_file: Path, lab: GeoLab, work: Path) -> None:
        from config.loader import load_site

        self.site_file = site_file
        self.lab = lab
        self.work = work
        self.site = load_site(site_file)
        assert self.site.geo is not None
        self.geo = self.site.geo
        self.tool = self.geo.tools[0]
        self.sites = [s.name for s in self.geo.sites]
        self.name = self.tool.names[0]
        self.ttl_s = self.geo.ttl_s
        #: keep the lab's state (its logs) after it is down: a row failed on it
        self.keep = False
        #: the flood's threads, and each thread's pause between queries (0: as fast as the
        #: resolver answers; a test paces a small flood)
        self.flood_threads = FLOOD_THREADS
        self.flood_pause_s = 0.0
        #: the flood goes on after the failover until this many queries were sent (bounded)
        self.flood_min_queries = FLOOD_MIN_QUERIES

    def address(self, site: str) -> str:
        """The tool's address at `site`."""
        return self.tool.sites[site].address

    def resolver(self, site: str) -> DnsServer:
        """The first caching resolver of `site`."""
        return self.geo.site(site).resolvers[0]

    def active(self) -> str:
        """The site the newest answer of the masters names.

        Raises:
            RuntimeError: no master answers, or the answer names no site of the tool.
        """
        from flows.plans.geo_failover import current_answer
        from tasks.geo_dns import read_names

        newest = current_answer(read_names(self.geo, self.tool), self.name)
        site = self.tool.site_of(newest.addresses[0]) if newest else None
        if site is None:
            raise RuntimeError(f"no master names a site of {self.tool.name}")
        return site

    def other(self, site: str) -> str:
        """The tool's other site."""
        return next(s for s in self.sites if s != site)

    def masters_agree(self, site: str, epoch: int | None) -> bool:
        """Whether every master answers and names `site` with `epoch` for every name."""
        from tasks.geo_dns import read_names

        return all(
            not a.error and a.addresses == [self.address(site)] and a.epoch == epoch
            for a in read_names(self.geo, self.tool)
        )

    def run(self, flow: Callable[..., Any], **kw: Any) -> tuple[GeoResult, float]:
        """Run a geo flow in this process, without approval; its `GeoResult` and seconds.

        Raises:
            RuntimeError: the run did not complete (its summary).
        """
        from flows.geo_failover import GeoResult

        t0 = time.monotonic()
        state = flow(
            str(self.site_file),
            service=self.tool.name,
            pause_for_approval=False,
            return_state=True,
            **kw,
        )
        took = round(time.monotonic() - t0, 3)
        result = state.result(raise_on_failure=False)
        if not isinstance(result, GeoResult) or result.status != "completed":
            raise RuntimeError(f"{kw.get('to')}: {getattr(result, 'summary', result)}")
        return result, took

    def watch(self) -> GeoWatchResult:
        """Run the geo watch once in this process; its `GeoWatchResult`."""
        from flows.geo_watch import GeoWatchResult, geo_watch

        result = geo_watch(str(self.site_file), return_state=True).result(raise_on_failure=False)
        if not isinstance(result, GeoWatchResult):
            raise RuntimeError(f"the geo watch ended without its result: {result}")
        return result

    def serving_at(self, site: str, via: str, timeout_s: float) -> float:
        """Wait until a write through the name via `via`'s resolver lands at `site`; seconds."""
        from infra.lab.geo.clients import client_context, write_once

        ctx = client_context(self.lab.ca_file())

        def lands() -> bool:
            o = write_once(
                f"bench-probe-{time.monotonic_ns()}",
                self.name,
                self.tool.port,
                self.resolver(via),
                ctx,
            )
            return o.ok and o.site == site

        return _wait(lands, timeout_s, f"a write through {self.name} to land at {site}")


def _acked(outcomes: list[Outcome], site: str | None = None, after: float = 0.0) -> int:
    """How many writes were acknowledged (at `site`; since `after`, Unix time)."""
    return sum(1 for o in outcomes if o.ok and o.done >= after and site in (None, o.site))


def _promoted_at(r: GeoResult) -> dict[int, dt.datetime]:
    """When the run's target was promoted, by its new epoch (for the fenced-accepts count)."""
    at = next(s.ended_at for s in r.steps if s.step in ("promote", "repoint-names"))
    assert r.new_epoch is not None
    return {r.new_epoch: at}


@contextlib.contextmanager
def _clients(g: BenchLab, via: str) -> Iterator[Load]:
    """Clients writing through the name via `via`'s resolver, from their first 10
    acknowledged writes until the block ends (then stopped; `outcomes()` still reads them)."""
    load = g.lab.client(via, rate=RATE, process=True).start()
    try:
        _wait(lambda: _acked(load.outcomes()) >= 10, 30, "the clients' first writes")
        yield load
    finally:
        load.stop()


def _landing(g: BenchLab, load: Load, to: str, after: float) -> None:
    """Wait until the clients have written 10 times at `to` since `after`."""
    _wait(
        lambda: _acked(load.outcomes(), to, after) >= 10,
        g.ttl_s + 30,
        f"the clients' writes to land at {to}",
    )


def planned_round(g: BenchLab, _i: int) -> PlannedRound:
    """A planned failover to the other site under the clients' writes."""
    from flows.geo_failover import geo_failover
    from infra.lab.geo.clients import score

    src = g.active()
    dst = g.other(src)
    with _clients(g, dst) as load:
        r, took = g.run(geo_failover, to=dst, reason="bench geo: planned")
        _landing(g, load, dst, time.time())
    outcomes = load.outcomes()
    s = score(outcomes, g.lab.rows(dst), _promoted_at(r))
    return PlannedRound(
        direction=f"{src} -> {dst}",
        flow_s=took,
        outage_s=longest_gap(o.done for o in outcomes if o.ok),
        acknowledged=s.acknowledged,
        lost=s.lost,
        fenced_accepts=s.fenced_accepts,
    )


class Probe:
    """Writes through the name via one resolver every 0.1 s until one lands at `site` (in a
    thread); when it landed."""

    def __init__(self, g: BenchLab, via: str, site: str) -> None:
        from infra.lab.geo.clients import client_context

        self.g, self.via, self.site = g, via, site
        self.ctx = client_context(g.lab.ca_file())
        self.landed: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="geo-bench-probe", daemon=True)

    def prime(self) -> None:
        """Resolve the name through the probe's resolver: it caches the current answer."""
        from infra.lab.geo.clients import resolve

        resolve(self.g.name, self.g.resolver(self.via))

    def start(self) -> None:
        """Start writing."""
        self._thread.start()

    def _run(self) -> None:
        from infra.lab.geo.clients import write_once

        n = 0
        while not self._stop.is_set():
            n += 1
            o = write_once(
                f"bench-probe-{os.getpid()}-{n}-{time.monotonic_ns()}",
                self.g.name,
                self.g.tool.port,
                self.g.resolver(self.via),
                self.ctx,
            )
            if o.ok and o.site == self.site:
                self.landed = o.done
                return
            self._stop.wait(0.1)

    def stop(self) -> None:
        """Stop writing."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(15)


#: how long before the kill the link between the sites is cut (the writes of that second are
#: the ones a failover of the lost site loses)
CUT_S = 1.0


def killed_round(g: BenchLab, i: int) -> KilledRound:
    """The active site killed under the clients' writes and failed over, its link to the
    target cut `CUT_S` before; then, untimed, the site restored and the tool brought back
    (`geo_failback`)."""
    from flows.geo_failover import geo_failback, geo_failover
    from flows.geo_records import last_lag
    from infra.lab.geo.clients import score

    a = g.active()
    b = g.other(a)
    probe = Probe(g, a, b)  # the lost site's resolver: it survives, with the old answer cached
    try:
        with _clients(g, b) as load:
            g.watch()
            reading = last_lag(g.site.site, g.tool.name, b)
            if reading is None or reading.seconds is None:
                raise RuntimeError(f"the watch left no lag reading of {b}: {reading}")
            # the link between the sites cut after the reading, and the site lost CUT_S later:
            # what it acknowledged meanwhile never reached the target (the loss the window
            # states: acknowledged after the reading)
            g.lab.sql(b, "STOP SLAVE IO_THREAD")
            time.sleep(CUT_S)
            probe.prime()
            killed = time.time()
            g.lab.kill_site(a)
            # a write answered while the kill ran was acknowledged before the site was lost
            lost_at = time.time()
            probe.start()
            r, took = g.run(geo_failover, to=b, max_lag_s=MAX_LAG_S, reason="bench geo: killed")
            if r.mode != "failover":
                raise RuntimeError(f"the failover of a killed site ran as {r.mode}")
            _wait(lambda: probe.landed is not None, g.ttl_s + 30, f"the probe's write at {b}")
            _landing(g, load, b, killed)
    finally:
        probe.stop()
    outcomes = load.outcomes()
    s = score(outcomes, g.lab.rows(b), _promoted_at(r))
    promoted = next(x.ended_at for x in r.steps if x.step == "promote").timestamp()
    start = reading.taken_at.timestamp() - (reading.seconds or 0.0)
    lost_ids = set(s.lost_ids)
    lost = [(o.site, o.done) for o in outcomes if o.id in lost_ids]
    out = KilledRound(
        direction=f"{a} -> {b}",
        flow_s=took,
        promoted_s=round(promoted - killed, 3),
        serving_s=round(probe.landed - killed, 3) if probe.landed else None,
        clients_back_s=first_after((o.done for o in outcomes if o.ok and o.site == b), killed),
        outage_s=longest_gap(o.done for o in outcomes if o.ok),
        lag_s=reading.seconds,
        lag_transactions=reading.transactions,
        reading_age_s=round(killed - reading.taken_at.timestamp(), 3),
        acknowledged=s.acknowledged,
        lost=s.lost,
        lost_outside_window=outside_window(lost, a, start, lost_at),
        fenced_accepts=s.fenced_accepts,
    )
    # back as the round found it (untimed): the site from its data, the watch, the failback
    g.lab.restore_site(a)
    g.watch()
    g.run(geo_failback, to=a, keep_dir=str(g.work / "kept" / f"{g.ttl_s}-{i}"), reason="bench")
    g.serving_at(a, b, g.ttl_s + 30)
    return out


def master_down_round(g: BenchLab, _i: int) -> MasterDownRound:
    """A planned failover with the old active site's master stopped; the master started again
    and repaired by the watch."""
    from flows.geo_failover import geo_failover
    from infra.lab.geo.clients import score

    a = g.active()
    b = g.other(a)
    with _clients(g, b) as load:
        g.lab.stop_master(a)
        try:
            r, took = g.run(geo_failover, to=b, reason="bench geo: one master down")
        finally:
            started = time.monotonic()
            g.lab.start_master(a)
        t0 = time.monotonic()
        g.watch()
        watch_s = round(time.monotonic() - t0, 3)
        repaired = g.masters_agree(b, r.new_epoch)
        repaired_s = round(time.monotonic() - started, 3)
        _landing(g, load, b, time.time())
    outcomes = load.outcomes()
    s = score(outcomes, g.lab.rows(b), _promoted_at(r))
    return MasterDownRound(
        direction=f"{a} -> {b}",
        flow_s=took,
        masters_behind=len(r.masters_behind),
        repaired=repaired,
        repaired_s=repaired_s,
        watch_s=watch_s,
        outage_s=longest_gap(o.done for o in outcomes if o.ok),
        acknowledged=s.acknowledged,
        lost=s.lost,
        fenced_accepts=s.fenced_accepts,
    )


def _flood_process(
    address: str,
    port: int,
    name: str,
    threads: int,
    pause_s: float,
    ready: Event,
    stop: Event,
    out: Queue[list[ThreadCount]],
    total: Any = None,
) -> None:
    """The flood's process: `threads` threads query `name` until `stop` (each waiting
    `pause_s` between queries); each puts its counts and its answers (repeats left out) on
    `out`."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    halt = threading.Event()
    results: list[ThreadCount] = []
    lock = threading.Lock()
    qname = name.rstrip(".") + "."

    def one() -> None:
        sent = answered = lost = 0
        answers: list[str] = []
        while not halt.is_set():
            sent += 1
            if total is not None:
                with total.get_lock():
                    total.value += 1
            try:
                r = dns.query.udp(
                    dns.message.make_query(qname, "A"), address, port=port, timeout=QUERY_TIMEOUT_S
                )
            except (dns.exception.DNSException, OSError):
                lost += 1
                continue
            answered += 1
            if r.rcode() == dns.rcode.NOERROR:
                got = ",".join(
                    sorted(str(x) for rs in r.answer if rs.rdtype == dns.rdatatype.A for x in rs)
                )
            else:
                got = dns.rcode.to_text(r.rcode())
            if not answers or answers[-1] != got:
                answers.append(got)
            if pause_s:
                halt.wait(pause_s)
        with lock:
            results.append(ThreadCount(sent=sent, answered=answered, lost=lost, answers=answers))

    workers = [threading.Thread(target=one, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    ready.set()
    stop.wait()
    halt.set()
    for w in workers:
        w.join(QUERY_TIMEOUT_S + 5)
    out.put(results)


def flood_round(g: BenchLab, _i: int) -> FloodRound:
    """A planned failover while `g.flood_threads` threads query the name through the first
    site's resolver as fast as it answers (or each at its pace: `g.flood_pause_s`)."""
    from flows.geo_failover import geo_failover

    a = g.active()
    b = g.other(a)
    via = g.resolver(g.sites[0])
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    sent = ctx.Value("l", 0)
    out: Queue[list[ThreadCount]] = ctx.Queue()
    proc = ctx.Process(
        target=_flood_process,
        args=(
            via.address,
            via.port,
            g.name,
            g.flood_threads,
            g.flood_pause_s,
            ready,
            stop,
            out,
            sent,
        ),
        name="geo-bench-flood",
        daemon=True,
    )
    proc.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the flood's process did not start its threads within 60 s")
        began = time.monotonic()
        time.sleep(1.0)
        _result, took = g.run(geo_failover, to=b, reason="bench geo: resolver flood")
        time.sleep(1.0)
        # a failover quicker than the flood's minimum: the queries after it count as well (the
        # answers must not flip back)
        deadline = time.monotonic() + 60
        while sent.value < g.flood_min_queries and time.monotonic() < deadline:
            time.sleep(0.1)
        lasted = time.monotonic() - began
        stop.set()
        threads = out.get(timeout=QUERY_TIMEOUT_S + 30)
    finally:
        stop.set()
        proc.join(QUERY_TIMEOUT_S + 30)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    flips = [count_flips(t["answers"], g.address(a), g.address(b)) for t in threads]
    queries = sum(t["sent"] for t in threads)
    return FloodRound(
        direction=f"{a} -> {b}",
        flow_s=took,
        threads=len(threads),
        queries=queries,
        answered=sum(t["answered"] for t in threads),
        lost=sum(t["lost"] for t in threads),
        qps=round(queries / lasted, 1),
        flipped_once=sum(f.flipped_once for f in flips),
        flipped_back=sum(f.flipped_back for f in flips),
        not_once=[f.sequence for f in flips if not f.flipped_once],
    )


ROUNDS: dict[RowName, Callable[[BenchLab, int], RoundKind]] = {
    "planned": planned_round,
    "killed-ttl5": killed_round,
    "killed-ttl60": killed_round,
    "master-down": master_down_round,
    "flood": flood_round,
}
