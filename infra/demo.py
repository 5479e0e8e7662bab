"""`make demo`: a real procedure on the lab, end to end.

The lab comes up with its load running; a local Prefect server starts on its embedded SQLite; the
`site-snapshot` flow shows what runs where; then a pipelined clean move takes every channel agent
off its host onto the backup while transfers keep arriving, with its progress in the terminal, its
report, and the lab's independent score (jobs lost, agents running twice). Last, a planned
master-to-slave switch of the web front end and its DNS alias while the lab's clients submit
through the alias, and what the clients saw (submissions lost, outage, writes by a fenced master).
Then a rolling upgrade of every agent host to the next version, with the database's
own view of each agent's time down.
"""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.markup import escape

from config.loader import load_site
from config.site import short_name as short
from infra import prefect_server
from infra.cli import DEFAULT_SITE
from infra.cli.common import error, note
from infra.lab.lab import Lab, LabError, missing_prerequisites
from infra.prefect_server import ensure_server

console = Console(highlight=False)


def main() -> int:
    """Run the demo; returns the exit code."""
    site_file = os.environ.get("HANDOVER_SITE", str(DEFAULT_SITE))
    missing = missing_prerequisites()
    if missing:
        error("the demo needs:", "; ".join(missing))
        return 1
    site = load_site(site_file)
    lab = Lab(site)
    if lab.is_up():
        console.print(f"[dim]lab already up (site {site.site}); using it[/dim]")
    else:
        try:
            report = lab.up(progress=note)
        except LabError as exc:
            error("lab:", exc)
            return 1
        console.print(
            f"lab up: {len(report['hosts'])} hosts, {report['agents']} agents serving, "
            f"in {report['seconds']['total']:.1f} s"
        )
    console.print("[dim]starting (or reusing) a local Prefect server...[/dim]")
    url, started = ensure_server(port=int(os.environ.get("HANDOVER_PREFECT_PORT", "4200")))
    os.environ["PREFECT_API_URL"] = url
    from flows.site_snapshot import site_snapshot
    from infra.run import run_procedure

    time.sleep(3)  # let transfers run, so the move has something to drain
    snap = site_snapshot(site_file)
    console.rule(f"site {site.site} before the move (read over SSH by the site-snapshot flow)")
    for h in snap.hosts:
        agents = ", ".join(short(a.name) for a in h.agents) or "none"
        transfers = ", ".join(f"{c} {n}" for c, n in h.transfers.items()) or "none"
        console.print(escape(f"{h.host}: agents: {agents}; running transfers: {transfers}"))
    # move the channel agents off whichever host of the pair runs them now
    first = next(a for a in site.service.agents if a.channel)
    src = snap.where(first.name)[0] if snap.where(first.name) else first.primary
    dst = first.backup if src == first.primary else first.primary
    lab.score(reset=True)
    console.rule(f"pipelined clean move {src} -> {dst} (approved up front for the demo)")
    code = run_procedure(
        "clean-move",
        {
            "site_file": site_file,
            "from_host": src,
            "to_host": dst,
            "mode": "pipelined",
            "pause_for_approval": False,
            "requested_by": "make demo",
        },
        as_json=False,
    )
    time.sleep(0.5)
    score = lab.score()
    console.rule("the lab's own score of the move")
    console.print(
        f"{score.jobs_done} jobs done, {score.jobs_lost} lost; channel downtime total "
        f"{score.downtime_total_s:.1f} s, max {score.downtime_max_s:.1f} s; agents serving on "
        f"two hosts at once: {len(score.agents_running_twice)}"
    )
    switch_code = 0
    if site.frontend is not None and site.dns is not None:
        lab.score(reset=True)
        console.rule(f"planned switch of {site.dns.alias} (approved up front for the demo)")
        switch_code = run_procedure(
            "switch",
            {
                "site_file": site_file,
                "pause_for_approval": False,
                "requested_by": "make demo",
                "reason": "the demo",
            },
            as_json=False,
        )
        time.sleep(2)  # the clients' next submissions, through the alias
        c = lab.score().clients
        if c is not None:
            console.rule("what the lab's clients saw")
            console.print(
                f"{c.accepted} submissions accepted, {c.lost} lost; longest outage "
                f"{c.outage_max_s:.2f} s; writes by a fenced master: "
                f"{c.writes_by_fenced_master}; epoch {c.epoch} held by {c.epoch_holder}"
            )
            if c.lost or c.writes_by_fenced_master:
                switch_code = 1
    # the rolling upgrade: every agent host upgraded one after the other, the transfers kept running
    running = [a.version for h in lab.status().hosts for a in h.agents if a.version]
    now_on = max(set(running), key=running.count) if running else "1"
    target = {"1": "2", "2": "4", "4": "5"}.get(now_on, "2")
    lab.score(reset=True)
    console.rule(f"rolling upgrade to version {target} (approved up front for the demo)")
    upgrade_code = run_procedure(
        "rolling-upgrade",
        {
            "site_file": site_file,
            "version": target,
            "pause_for_approval": False,
            "requested_by": "make demo",
        },
        as_json=False,
    )
    time.sleep(2)  # the transfers that ran across the last restart are swept
    up_score = lab.score()
    console.rule("the lab's own score of the upgrade")
    gaps = [g for gs in up_score.restart_gaps_s.values() for g in gs]
    console.print(
        f"{up_score.jobs_done} jobs done, {up_score.jobs_lost} lost; "
        f"{len(up_score.restart_gaps_s)} agents restarted, the longest down "
        f"{max(gaps, default=0.0):.3f} s (as the database saw it); transfers by version: "
        f"{up_score.transfers_by_version}"
    )
    if up_score.jobs_lost:
        upgrade_code = 1
    ui = url.removesuffix("/api")
    console.print(
        f"\nPrefect UI: {ui} (flow runs 'site-snapshot', 'clean-move', 'switch' and "
        "'rolling-upgrade', their "
        "artifacts)"
        + (" [dim](server started by the demo)[/dim]" if started else "")
        + "\nThe UI asks for the server's auth string: "
        + escape(str(prefect_server.HOME / prefect_server.AUTH_FILE))
        + " (readable by its owner only)"
        + f"\nMove back: .venv/bin/handover run clean-move --from {dst} --to {src}"
        + "\nSwitch back: .venv/bin/handover run switch"
        + "\nTear down: .venv/bin/handover lab down && .venv/bin/handover server stop"
    )
    moved = code == 0 and score.jobs_lost == 0 and not score.agents_running_twice
    return 0 if moved and switch_code == 0 and upgrade_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
