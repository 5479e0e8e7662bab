"""Clients of the geo lab's tool: writes through its name, as a real client makes them, and
their score.

Each write resolves the tool's name through a given caching resolver (every request: the
resolver does the caching, for the name's TTL), connects to the address it answered with
SNI and Host the name, verifies TLS against the lab's CA, follows a 307 once, and records its
outcome (id, sent, done, status, site, epoch, error) as one JSON line. Run it as a thread
(`WriteLoad`) or as a process of its own (`WriteLoadProcess`, ``python -m
infra.lab.geo.clients``).

`score` says what the writes saw once the tool's final active database is known: writes sent,
acknowledged, lost (acknowledged, yet missing from the final database), accepted by a fenced
side (acknowledged with an epoch older than the newest one promoted before the
acknowledgement), and the client-visible outage.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from config.site import DnsServer
from infra.lab.errors import LabError

#: a write's bound (DNS, connection, TLS and answer, each)
TIMEOUT_S = 3.0


class Outcome(BaseModel):
    """What one write saw."""

    id: str
    #: when it was sent and when its answer came (Unix time, seconds)
    sent: float
    done: float
    #: the final HTTP status (None: no answer at all)
    status: int | None
    #: where the tool took it, with which epoch (a 200 only)
    site: str | None = None
    epoch: int | None = None
    #: what went wrong (None for a 200)
    error: str | None = None
    #: the address the name resolved to, and the one a 307 sent it to
    address: str | None = None
    redirected_to: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the write was acknowledged."""
        return self.status == 200


class Score(BaseModel):
    """The score of a run of writes (module docstring)."""

    sent: int
    acknowledged: int
    failed: int
    #: acknowledged writes missing from the final active database
    lost: int
    lost_ids: list[str]
    #: acknowledged by a side fenced off by then (an epoch older than the newest promoted)
    fenced_accepts: int
    fenced_ids: list[str]
    #: the longest span without an acknowledged write around failed ones, and their sum
    outage_max_s: float
    failed_time_s: float


class _Pinned(http.client.HTTPSConnection):
    """HTTPS to a given address, with SNI, Host and certificate check for `host`."""

    def __init__(self, host: str, address: str, port: int, context: ssl.SSLContext, timeout: float):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._ctx = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)


def resolve(name: str, resolver: DnsServer, timeout_s: float = TIMEOUT_S) -> str:
    """The first address the resolver answers for `name`.

    Raises:
        LabError: no answer, an error code or no address.
    """
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    q = dns.message.make_query(name.rstrip(".") + ".", "A")
    try:
        r = dns.query.udp(q, resolver.address, port=resolver.port, timeout=timeout_s)
    except (dns.exception.DNSException, OSError) as exc:
        raise LabError(f"dns: no answer from {resolver.address}:{resolver.port} ({exc})") from exc
    if r.rcode() != dns.rcode.NOERROR:
        raise LabError(f"dns: {dns.rcode.to_text(r.rcode())}")
    addresses = [rd.address for rs in r.answer if rs.rdtype == dns.rdatatype.A for rd in rs]
    if not addresses:
        raise LabError(f"dns: no address for {name}")
    return str(addresses[0])


def client_context(ca_file: Path) -> ssl.SSLContext:
    """A TLS client context trusting the lab's CA only, checking host names."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _post(
    host: str, address: str, port: int, body: bytes, ctx: ssl.SSLContext, timeout_s: float
) -> tuple[int, dict[str, Any], str | None]:
    conn = _Pinned(host, address, port, ctx, timeout_s)
    try:
        conn.request("POST", "/write", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        location = resp.getheader("Location")
    finally:
        conn.close()
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {"error": raw[:200].decode(errors="replace")}
    return resp.status, data if isinstance(data, dict) else {}, location


def write_once(
    ident: str,
    name: str,
    port: int,
    resolver: DnsServer,
    ctx: ssl.SSLContext,
    timeout_s: float = TIMEOUT_S,
) -> Outcome:
    """One write through the tool's name (module docstring); never raises."""
    sent = time.time()
    body = json.dumps({"id": ident}).encode()
    address = redirected = None
    try:
        address = resolve(name, resolver, timeout_s)
        status, data, location = _post(name, address, port, body, ctx, timeout_s)
        if status == 307 and location:
            to = urlsplit(location)
            redirected = to.hostname
            if to.scheme != "https" or not to.hostname:
                raise LabError(f"a 307 to {location!r}, not an https address")
            status, data, location = _post(
                to.hostname, to.hostname, to.port or 443, body, ctx, timeout_s
            )
    except (LabError, OSError, ssl.SSLError, http.client.HTTPException) as exc:
        error = str(exc) or type(exc).__name__
        return Outcome(
            id=ident,
            sent=sent,
            done=time.time(),
            status=None,
            error=error,
            address=address,
            redirected_to=redirected,
        )
    ok = status == 200
    return Outcome(
        id=ident,
        sent=sent,
        done=time.time(),
        status=status,
        site=data.get("site") if ok else None,
        epoch=data.get("epoch") if ok else None,
        error=None if ok else str(data.get("error") or f"HTTP {status}"),
        address=address,
        redirected_to=redirected,
    )


def read_outcomes(path: Path) -> list[Outcome]:
    """The outcomes written to `path` so far (a line cut short at the end is left out)."""
    out = []
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        for line in f:
            with contextlib.suppress(ValueError):
                out.append(Outcome.model_validate_json(line))
    return out


class WriteLoad:
    """Writes through the tool's name at a steady rate, in a thread (module docstring)."""

    def __init__(
        self,
        name: str,
        port: int,
        resolver: DnsServer,
        ca_file: Path,
        out: Path,
        *,
        rate: float = 10.0,
        timeout_s: float = TIMEOUT_S,
        prefix: str | None = None,
    ) -> None:
        if rate <= 0:
            raise LabError(f"rate {rate}: give writes per second above 0")
        self.name, self.port, self.resolver = name, port, resolver
        self.ctx = client_context(ca_file)
        self.out = out
        self.rate = rate
        self.timeout_s = timeout_s
        self.prefix = prefix or uuid.uuid4().hex[:8]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> WriteLoad:
        """Start writing (ids ``PREFIX-000001``...); returns itself."""
        if self._thread is not None:
            raise LabError("this load already runs; make another WriteLoad")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self.run, name="geo-write-load", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Write until `stop` (the thread's body; a process's main loop)."""
        period, n = 1.0 / self.rate, 0
        next_at = time.monotonic()
        with open(self.out, "a") as f:
            while not self._stop.is_set():
                n += 1
                o = write_once(
                    f"{self.prefix}-{n:06d}",
                    self.name,
                    self.port,
                    self.resolver,
                    self.ctx,
                    self.timeout_s,
                )
                f.write(o.model_dump_json() + "\n")
                f.flush()
                next_at = max(next_at + period, time.monotonic())
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def request_stop(self) -> None:
        """Ask the writing to stop after the write under way (safe from a signal handler)."""
        self._stop.set()

    def stop(self) -> list[Outcome]:
        """Stop writing (the write under way ends first); every outcome so far."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=4 * self.timeout_s + 2)
        return self.outcomes()

    def outcomes(self) -> list[Outcome]:
        """Every outcome so far."""
        return read_outcomes(self.out)


class WriteLoadProcess:
    """A `WriteLoad` in a process of its own (``python -m infra.lab.geo.clients``)."""

    def __init__(
        self,
        name: str,
        port: int,
        resolver: DnsServer,
        ca_file: Path,
        out: Path,
        *,
        rate: float = 10.0,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.out = out
        self.argv = [
            sys.executable,
            "-m",
            "infra.lab.geo.clients",
            "--name",
            name,
            "--port",
            str(port),
            "--resolver",
            f"{resolver.address}:{resolver.port}",
            "--ca",
            str(ca_file),
            "--out",
            str(out),
            "--rate",
            str(rate),
            "--timeout",
            str(timeout_s),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WriteLoadProcess:
        """Start the process; returns itself."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with open(self.out.with_suffix(".log"), "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def outcomes(self) -> list[Outcome]:
        """Every outcome the process recorded so far."""
        return read_outcomes(self.out)

    def stop(self) -> list[Outcome]:
        """Stop the process (SIGTERM; SIGKILL after 15 s); every outcome it recorded."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return read_outcomes(self.out)


def _unix(value: float | dt.datetime) -> float:
    return value.timestamp() if isinstance(value, dt.datetime) else float(value)


def score(
    outcomes: Iterable[Outcome],
    final_db_rows: Iterable[str | Mapping[str, Any]],
    promoted_at: Mapping[int, float | dt.datetime] | None = None,
) -> Score:
    """Score a run of writes against the final active database (module docstring).

    Args:
        outcomes: what the writes saw.
        final_db_rows: the ``writes`` rows (or their ids) of the tool's final active database.
        promoted_at: epoch -> when it was promoted (Unix time or an aware datetime): a write
            acknowledged after epoch E was promoted, with an epoch below E, was accepted by a
            fenced side.

    Returns:
        The score; an outage is the span from the last acknowledged write before failed ones
        to the first acknowledged after them (or the last answer).
    """
    done = sorted(outcomes, key=lambda o: o.done)
    ids = {r if isinstance(r, str) else str(r["id"]) for r in final_db_rows}
    acked = [o for o in done if o.ok]
    lost = [o.id for o in acked if o.id not in ids]
    promotions = sorted((_unix(t), e) for e, t in (promoted_at or {}).items())
    fenced = []
    for o in acked:
        newest = max((e for t, e in promotions if t <= o.done), default=None)
        if newest is not None and o.epoch is not None and o.epoch < newest:
            fenced.append(o.id)
    spans: list[float] = []
    if done:
        last_ok, failing = min(o.sent for o in done), False
        for o in done:
            if o.ok:
                if failing:
                    spans.append(o.done - last_ok)
                last_ok, failing = o.done, False
            else:
                failing = True
        if failing:
            spans.append(done[-1].done - last_ok)
    return Score(
        sent=len(done),
        acknowledged=len(acked),
        failed=len(done) - len(acked),
        lost=len(lost),
        lost_ids=lost,
        fenced_accepts=len(fenced),
        fenced_ids=fenced,
        outage_max_s=round(max(spans, default=0.0), 3),
        failed_time_s=round(sum(spans), 3),
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m infra.lab.geo.clients``: write until SIGTERM (`WriteLoad`)."""
    p = argparse.ArgumentParser(prog="python -m infra.lab.geo.clients")
    p.add_argument("--name", required=True, help="the tool's name")
    p.add_argument("--port", required=True, type=int, help="the tool's port")
    p.add_argument("--resolver", required=True, help="the caching resolver, ADDRESS:PORT")
    p.add_argument("--ca", required=True, type=Path, help="the lab's CA certificate")
    p.add_argument("--out", required=True, type=Path, help="where outcomes go (JSON lines)")
    p.add_argument("--rate", type=float, default=10.0, help="writes per second")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S, help="each step's bound (s)")
    args = p.parse_args(argv)
    address, _, port = args.resolver.rpartition(":")
    load = WriteLoad(
        args.name,
        args.port,
        DnsServer(address=address, port=int(port)),
        args.ca,
        args.out,
        rate=args.rate,
        timeout_s=args.timeout,
        prefix=f"p{os.getpid()}",
    )
    signal.signal(signal.SIGTERM, lambda *_: load.request_stop())
    load.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
