"""`handover bench switch`: the master-to-slave switch under load, timed.

For each alias TTL (the lab's 5 s and the production 60 s by default), on a lab of its own with
its clients submitting through the alias, a temporary Prefect server (SQLite), and `handover
serve` + `handover gateway`:

* **planned** rounds: `switch` (approved up front) back and forth; the client-visible outage is
  what the clients measured (first failure to the next success; 0 when none failed).
* **failover** rounds: the master's front end is killed (SIGKILL) and the signed
  ``frontend_down`` alert sent at once, as the sensor would; timed: alert -> flow start, flow
  start -> alias updated (the primary answers the new address), alias updated -> first client
  success, and the whole client-visible outage; against the target alert-to-start + 3 s + TTL.
* a **resolver flood** during one planned switch: threads ask the alias of
  the authoritative servers as fast as they answer; queries sent and lost, and whether each
  thread's answers flip exactly once and never back.

Submissions lost and writes by a fenced master are read from the lab's score after each TTL.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from infra.bench.alert import (
    ServeAndGateway,
    final_run_of_alert,
    spread,
    stack_env,
    temporary_prefect,
)
from infra.lab.lab import Lab, derive_site_file

ROOT = Path(__file__).resolve().parent.parent.parent
OCTET = 246
#: the planned switch's target: the client-visible outage, whatever the TTL
PLANNED_TARGET_S = 2.0
#: the failover's target: alert -> flow start + this + the TTL
FAILOVER_SLACK_S = 3.0


def _master(lab: Lab) -> str:
    from tasks.adapters.dns import read_alias

    site = lab.site
    assert site.dns is not None
    [address] = read_alias(site.dns, site.dns.servers()[0]).addresses
    return next(h.name for h in site.hosts if h.address == address)


def _primary_answers(lab: Lab, address: str) -> bool:
    from tasks.adapters.dns import DnsError, read_alias

    site = lab.site
    assert site.dns is not None
    try:
        return read_alias(site.dns, site.dns.servers()[0], 1.0).addresses == [address]
    except DnsError:
        return False


def _clients_settled(lab: Lab, after_s: float) -> Any:
    """The clients' score once they have been served again for `after_s` seconds."""
    deadline = time.monotonic() + after_s + 120
    seen = lab.score().clients
    while time.monotonic() < deadline:
        time.sleep(after_s)
        now = lab.score().clients
        if now is not None and seen is not None and now.accepted > seen.accepted + 2:
            if now.waiting == 0:
                return now
        seen = now
    raise RuntimeError("the lab's clients were not served again within two minutes")


def _planned_round(lab: Lab, site_file: Path) -> dict[str, float]:
    from flows.switch import SwitchResult, switch

    lab.score(reset=True)
    started = time.monotonic()
    state = switch(str(site_file), pause_for_approval=False, return_state=True)
    result = state.result(raise_on_failure=False)
    if not isinstance(result, SwitchResult) or result.status != "completed":
        raise RuntimeError(f"the planned switch did not complete: {result}")
    took = time.monotonic() - started
    c = _clients_settled(lab, 1.0)
    return {"flow_s": round(took, 3), "outage_s": c.outage_max_s}


def _failover_round(lab: Lab, stack: ServeAndGateway, secret: bytes, ttl: int) -> dict[str, float]:
    from infra.send_alert import alert_body, post_alert

    site = lab.site
    assert site.frontend is not None
    master = _master(lab)
    other = next(h for h in site.frontend.hosts if h != master)
    to_address = site.host(other).address
    lab.score(reset=True)
    time.sleep(1.2)  # the previous incident's dedup window (1 s) has passed
    lab.fault(master, "frontend-down")
    sent_wall = time.time()
    sent = time.monotonic()
    body = alert_body(site.site, master, site.service.name, "frontend_down", summary="bench")
    status, answer = post_alert(stack.url, secret, body)
    if status != 202 or answer["alerts"][0]["result"] != "new":
        raise RuntimeError(f"the gateway did not open an incident: {status} {answer}")
    alias_s = None
    deadline = sent + 120
    while alias_s is None and time.monotonic() < deadline:
        if _primary_answers(lab, to_address):
            alias_s = time.monotonic() - sent
        else:
            time.sleep(0.05)
    if alias_s is None:
        raise RuntimeError(f"the alias did not move to {other} within 120 s")
    event = answer["alerts"][0]["event_id"]
    run = final_run_of_alert(event, deadline, "switch")
    if run is None or run.start_time is None or not (run.state and run.state.is_completed()):
        raise RuntimeError(f"the switch of alert {event} did not complete: {run and run.state}")
    flow_start = run.start_time.timestamp() - sent_wall
    c = _clients_settled(lab, 1.0)
    lab.heal(master)  # its front end comes back as a slave (its role file says so)
    outage = c.outage_max_s
    return {
        "alert_to_start_s": round(flow_start, 3),
        "start_to_alias_s": round(alias_s - flow_start, 3),
        # the clients' outage began at the kill (they submit every 0.25 s)
        "alias_to_first_success_s": round(max(0.0, outage - alias_s), 3),
        "outage_s": outage,
        "target_s": round(flow_start + FAILOVER_SLACK_S + ttl, 3),
    }


def _flood(lab: Lab, site_file: Path, threads: int) -> dict[str, Any]:
    """Resolver threads on the authoritative servers while one planned switch runs."""
    import dns.exception
    import dns.message
    import dns.query

    site = lab.site
    assert site.dns is not None
    servers = site.dns.servers()
    alias = site.dns.alias.rstrip(".") + "."
    stop = threading.Event()
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def resolver(i: int) -> None:
        srv = servers[i % len(servers)]
        sent = lost = 0
        answers: list[str] = []
        while not stop.is_set():
            sent += 1
            try:
                r = dns.query.udp(
                    dns.message.make_query(alias, "A"), srv.address, port=srv.port, timeout=1.0
                )
                got = ",".join(sorted(rd.to_text() for rs in r.answer for rd in rs))
                if not answers or answers[-1] != got:
                    answers.append(got)
            except (dns.exception.DNSException, OSError):
                lost += 1
        with lock:
            results.append({"sent": sent, "lost": lost, "answers": answers})

    workers = [threading.Thread(target=resolver, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    round_ = _planned_round(lab, site_file)
    time.sleep(1.0)
    stop.set()
    for w in workers:
        w.join(10)
    flips = [len(r["answers"]) - 1 for r in results]
    return {
        "threads": threads,
        "queries": sum(r["sent"] for r in results),
        "lost": sum(r["lost"] for r in results),
        "flipped_exactly_once": sum(1 for f in flips if f == 1),
        "flipped_back": sum(1 for f in flips if f > 1),
        "switch": round_,
    }


def _ttl_rounds(
    ttl: int,
    rounds: int,
    flood_threads: int,
    api: str,
    port: int,
    tmp: Path,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    site_file = derive_site_file(
        ROOT / "config" / "sites" / "lab.yaml",
        tmp / f"benchswitch-{ttl}.yaml",
        name="benchswitch",
        octet=OCTET,
        db_port=20000 + OCTET,
        state_dir=Path(f"/var/tmp/handover-lab/bench-switch-{os.getpid()}"),
    )
    data = yaml.safe_load(site_file.read_text())
    data["dns"]["ttl_s"] = ttl
    data["alerts"]["dedup_window_s"] = 1
    # every failover round is automatic: no countdown, no anti-flapping pause
    data["frontend"].update({"countdown_s": 0, "block_s": 0})
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    lab = Lab.from_file(site_file)
    progress(f"TTL {ttl} s: bench lab up")
    lab.up()
    secret = secrets.token_hex(16)
    out: dict[str, Any] = {"ttl_s": ttl}
    try:
        planned = []
        for i in range(rounds):
            planned.append(_planned_round(lab, site_file))
            progress(
                f"TTL {ttl} s planned {i + 1}/{rounds}: outage "
                f"{planned[-1]['outage_s']:.2f} s, flow {planned[-1]['flow_s']:.2f} s"
            )
        if flood_threads:
            out["flood"] = _flood(lab, site_file, flood_threads)
            f = out["flood"]
            progress(
                f"TTL {ttl} s flood: {f['queries']} queries, {f['lost']} lost, "
                f"{f['flipped_exactly_once']}/{f['threads']} resolvers flipped once"
            )
        stack = ServeAndGateway(site_file, port + 100, stack_env(api, secret))
        progress(f"TTL {ttl} s: handover serve and handover gateway")
        stack.start()
        failover = []
        try:
            for i in range(rounds):
                failover.append(_failover_round(lab, stack, secret.encode(), ttl))
                s = failover[-1]
                progress(
                    f"TTL {ttl} s failover {i + 1}/{rounds}: alert -> start "
                    f"{s['alert_to_start_s']:.2f} s, -> alias {s['start_to_alias_s']:.2f} s, "
                    f"outage {s['outage_s']:.2f} s (target {s['target_s']:.2f} s)"
                )
        finally:
            stack.stop()
        score = lab.score().clients
        assert score is not None
    finally:
        lab.down()
        lab.remove_state()
    out["planned"] = {
        "outage_s": spread([r["outage_s"] for r in planned]),
        "flow_s": spread([r["flow_s"] for r in planned]),
        "samples": planned,
    }
    out["failover"] = {
        k: spread([r[k] for r in failover])
        for k in (
            "alert_to_start_s",
            "start_to_alias_s",
            "alias_to_first_success_s",
            "outage_s",
            "target_s",
        )
    }
    out["failover"]["samples"] = failover
    out["lost"] = score.lost
    out["writes_by_fenced_master"] = score.writes_by_fenced_master
    out["meets_targets"] = (
        out["planned"]["outage_s"]["p50"] <= PLANNED_TARGET_S
        and out["failover"]["outage_s"]["p50"] <= out["failover"]["target_s"]["p50"]
        and score.lost == 0
        and score.writes_by_fenced_master == 0
        and (not flood_threads or out["flood"]["flipped_back"] == 0)
    )
    return out


def bench_switch(
    *,
    rounds: int = 3,
    ttls: tuple[int, ...] = (5, 60),
    flood_threads: int = 8,
    progress: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Planned and failover switches under the clients' load, per alias TTL (module docstring)."""
    out: dict[str, Any] = {"rounds": rounds, "by_ttl": {}}
    tmp = Path(tempfile.mkdtemp(prefix="handover-bench-switch-"))
    # one Prefect server for the whole bench: Prefect's concurrency service keeps its client
    # for the life of the process, so a second server in the same process would not be asked
    progress("temporary Prefect server")
    with temporary_prefect(tmp / "prefect", 20460) as api:
        for ttl in ttls:
            out["by_ttl"][str(ttl)] = _ttl_rounds(
                ttl, rounds, flood_threads, api, 20460, tmp, progress
            )
    out["ok"] = all(r["meets_targets"] for r in out["by_ttl"].values())
    lines = [
        f"master-to-slave switch under load ({rounds} rounds each; clients 4 jobs/s through the "
        f"alias); targets: planned outage p50 <= {PLANNED_TARGET_S:g} s, failover outage p50 <= "
        f"alert->start + {FAILOVER_SLACK_S:g} s + TTL"
    ]
    for ttl, r in out["by_ttl"].items():
        p, f = r["planned"], r["failover"]
        lines += [
            f"  TTL {ttl} s ({'meets' if r['meets_targets'] else 'MISSES'} the targets):",
            f"    planned:  client outage p50 {p['outage_s']['p50']:.2f} s (max "
            f"{p['outage_s']['max']:.2f} s); flow p50 {p['flow_s']['p50']:.2f} s",
            f"    failover: alert -> flow start p50 {f['alert_to_start_s']['p50']:.2f} s (p95 "
            f"{f['alert_to_start_s']['p95']:.2f} s); start -> alias updated p50 "
            f"{f['start_to_alias_s']['p50']:.2f} s; alias -> first client success p50 "
            f"{f['alias_to_first_success_s']['p50']:.2f} s",
            f"              client outage p50 {f['outage_s']['p50']:.2f} s (min "
            f"{f['outage_s']['min']:.2f}, max {f['outage_s']['max']:.2f}); target p50 "
            f"{f['target_s']['p50']:.2f} s; ratio outage/target "
            f"{f['outage_s']['p50'] / f['target_s']['p50']:.2f}",
            f"    submissions lost {r['lost']}; writes by a fenced master "
            f"{r['writes_by_fenced_master']}",
        ]
        if "flood" in r:
            fl = r["flood"]
            lines.append(
                f"    resolver flood: {fl['queries']} queries from {fl['threads']} resolvers, "
                f"{fl['lost']} lost; answers flipped exactly once in {fl['flipped_exactly_once']}"
                f"/{fl['threads']}, back in {fl['flipped_back']}"
            )
    out["summary"] = lines
    return out
