"""The lab's clients: submit jobs through the service alias, as real FTS clients do.

One process per lab with a front end (title ``handover-lab-clients SITE``), started by
`handover lab up` and stopped by `handover lab down`. Every ``1 / lab.clients_per_second`` a new
job joins the queue; the client submits the queue's head until a front end accepts it, then the
next one, so a job is never given up (a failed submission is retried, with the same id, every
`RETRY_S`).

* **Resolution honours the TTL**: the alias is asked of the site's authoritative servers in turn
  (as a stub resolver with several name servers), and the answer is kept for its TTL, never
  refreshed early because a submission failed: a dead master costs clients up to the TTL.
* **Redirects are followed**, up to `MAX_REDIRECTS` per attempt (a master switched away from
  redirects to the new one).
* **The score** (table ``score_clients``, read by `handover lab score`): submissions accepted,
  answers refused (503: a slave, a fenced master), attempts failed (no connection, a timeout),
  jobs still waiting, the client-visible outages (first failure to the next success: count, the
  longest, the last), and jobs lost: accepted by a front end but absent from the database,
  checked by the client itself a few seconds after each acceptance.

The load switch of `handover lab load on|off` pauses new jobs; the queue is still submitted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import random
import signal
import sys
import time
import uuid
from typing import Any

from config.loader import load_site
from config.site import Site
from infra.lab.db import connect
from infra.lab.paths import LabPaths
from infra.lab.settings import lab_settings

RETRY_S = 0.1
#: redirects followed per attempt (as an HTTP client library does)
MAX_REDIRECTS = 5
#: longer than a front end holds a redirected request (`frontend.HOLD_REDIRECTED_S`), as a real
#: client's timeout is
HTTP_TIMEOUT_S = 5.0
FLUSH_S = 0.3
#: accepted ids are checked against the database after this long
VERIFY_AFTER_S = 2.0


class Resolver:
    """The alias's addresses, kept for the TTL of the answer."""

    def __init__(self, site: Site) -> None:
        assert site.dns is not None
        self.dns = site.dns
        self.servers = site.dns.servers()
        self.turn = 0
        self.addresses: list[str] = []
        self.expires = 0.0

    def resolve(self) -> list[str]:
        """The alias's addresses (cached for the answer's TTL; [] when no server answers)."""
        import dns.exception
        import dns.message
        import dns.query
        import dns.rdatatype

        now = time.monotonic()
        if self.addresses and now < self.expires:
            return self.addresses
        alias = self.dns.alias.rstrip(".") + "."
        for _ in range(len(self.servers)):
            srv = self.servers[self.turn % len(self.servers)]
            self.turn += 1
            try:
                r = dns.query.udp(
                    dns.message.make_query(alias, "A"), srv.address, port=srv.port, timeout=1.0
                )
            except (dns.exception.DNSException, OSError):
                continue
            for rs in r.answer:
                if rs.rdtype == dns.rdatatype.A:
                    self.addresses = sorted(rd.to_text() for rd in rs)
                    self.expires = now + rs.ttl
                    return self.addresses
        return []


class Clients:
    """The client process's state."""

    def __init__(self, paths: LabPaths) -> None:
        self.paths = paths
        self.site = load_site(paths.site_file)
        assert self.site.frontend is not None
        self.lab = lab_settings(self.site)
        self.port = self.site.frontend.port
        self.password = paths.db_password.read_text().strip()
        self.conn: Any = None
        self.resolver = Resolver(self.site)
        self.alias = self.resolver.dns.alias
        self.rng = random.Random(self.lab.transfers.seed)  # noqa: S311 - which address only
        self.queue: collections.deque[str] = collections.deque()
        self.to_verify: collections.deque[tuple[float, str]] = collections.deque()
        self.delta = dict.fromkeys(("accepted", "refused", "failed", "outages", "lost"), 0)
        self.outage_since: float | None = None
        self.outage_max = 0.0
        self.outage_last = 0.0
        self.load_on = self.lab.load_on_start
        self.stopping = False
        self.last_body = ""

    # --- one submission ------------------------------------------------------------------------

    def _post(self, address: str, job_id: str, path: str = "/jobs") -> tuple[int, str | None]:
        conn = http.client.HTTPConnection(address, self.port, timeout=HTTP_TIMEOUT_S)
        try:
            body = json.dumps({"id": job_id})
            conn.request(
                "POST",
                path,
                body=body,
                headers={"Content-Type": "application/json", "Host": self.alias},
            )
            r = conn.getresponse()
            self.last_body = r.read()[:200].decode(errors="replace")
            return r.status, r.getheader("Location")
        finally:
            conn.close()

    def submit(self, job_id: str) -> tuple[str, str]:
        """One attempt: (``accepted``, ``refused`` or ``failed``; what happened)."""
        addresses = self.resolver.resolve()
        if not addresses:
            return "failed", "the alias did not resolve"
        address = self.rng.choice(addresses)
        try:
            status, location = self._post(address, job_id)
            hops = 0
            while status == 307 and location and hops < MAX_REDIRECTS:
                hostport, _, rest = location.split("//", 1)[-1].partition("/")
                address = hostport.rsplit(":", 1)[0]
                status, location = self._post(address, job_id, "/" + rest)
                hops += 1
        except (OSError, http.client.HTTPException) as exc:
            return "failed", f"{address}: {type(exc).__name__}: {exc}"
        if status in (200, 201):
            return "accepted", ""
        return (
            "refused" if status == 503 else "failed"
        ), f"{address}: HTTP {status} {self.last_body}"

    # --- bookkeeping ---------------------------------------------------------------------------

    def _db(self) -> Any:
        if self.conn is None:
            self.conn = connect(self.lab.db_address, self.lab.db_port, self.password, timeout=3)
        return self.conn

    def flush(self) -> None:
        """Write the counters' increments, check the ids accepted a while ago, read the switch."""
        try:
            db = self._db()
            due: list[str] = []
            now = time.monotonic()
            while self.to_verify and now - self.to_verify[0][0] >= VERIFY_AFTER_S:
                due.append(self.to_verify.popleft()[1])
            if due:
                found = db.run("SELECT count(*) FROM submissions WHERE id = ANY(:ids)", ids=due)
                self.delta["lost"] += len(due) - int(found[0][0])
            d = self.delta
            db.run(
                "UPDATE score_clients SET accepted = accepted + :a, refused = refused + :r, "
                "failed = failed + :f, outages = outages + :o, lost = lost + :l, waiting = :w, "
                "outage_max_s = greatest(outage_max_s, :m), "
                "outage_last_s = CASE WHEN :o > 0 THEN :last ELSE outage_last_s END, "
                "updated_at = clock_timestamp() WHERE id = 1",
                a=d["accepted"],
                r=d["refused"],
                f=d["failed"],
                o=d["outages"],
                l=d["lost"],
                w=len(self.queue),
                m=self.outage_max,
                last=self.outage_last,
            )
            self.delta = dict.fromkeys(self.delta, 0)
            self.outage_max = 0.0
            ctl = dict(db.run("SELECT key, value FROM lab_control WHERE key = 'load'"))
            self.load_on = ctl.get("load", "on" if self.lab.load_on_start else "off") == "on"
        except Exception as exc:  # noqa: BLE001 - the bookkeeping retries; the clients go on
            print(f"clients: bookkeeping failed: {exc}", flush=True)
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def run(self) -> int:
        rate = self.lab.clients_per_second
        next_job = time.monotonic()
        next_flush = time.monotonic()
        while not self.stopping:
            now = time.monotonic()
            if rate > 0 and now >= next_job:
                if self.load_on:
                    self.queue.append(uuid.uuid4().hex)
                next_job = max(next_job + 1.0 / rate, now - 1.0)
            if self.queue:
                attempt = time.monotonic()
                result, what = self.submit(self.queue[0])
                self.delta[result] += 1
                now = time.monotonic()
                if result == "accepted":
                    self.to_verify.append((now, self.queue.popleft()))
                    if self.outage_since is not None:
                        self.outage_last = now - self.outage_since
                        self.outage_max = max(self.outage_max, self.outage_last)
                        self.delta["outages"] += 1
                        self.outage_since = None
                else:
                    if self.outage_since is None:
                        # the outage began when the failed attempt was sent, not when it failed
                        self.outage_since = attempt
                        print(f"{time.strftime('%H:%M:%S')} clients: outage: {what}", flush=True)
                    time.sleep(RETRY_S)
            else:
                time.sleep(max(0.0, min(next_job, next_flush) - time.monotonic()))
            if time.monotonic() >= next_flush:
                self.flush()
                next_flush = time.monotonic() + FLUSH_S
        self.flush()
        return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m infra.lab.clients --state-dir DIR``."""
    ap = argparse.ArgumentParser(prog="clients")
    ap.add_argument("--state-dir", required=True)
    args = ap.parse_args(argv)
    from pathlib import Path

    clients = Clients(LabPaths(Path(args.state_dir)))

    def _stop(_s: int, _f: Any) -> None:
        clients.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with contextlib.suppress(ImportError):
        from setproctitle import setproctitle

        setproctitle(f"handover-lab-clients {clients.site.site}")
    return clients.run()


if __name__ == "__main__":
    sys.exit(main())
