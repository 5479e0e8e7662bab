"""`make demo`: the lab up with its load running, and a live snapshot of the site taken through the
SSH layer by the `site-snapshot` flow on a local Prefect server (embedded SQLite).
"""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.markup import escape

from config.loader import load_site
from config.site import short_name as short
from infra.cli import DEFAULT_SITE, _print_status
from infra.lab.lab import Lab, LabError, missing_prerequisites
from infra.prefect_server import ensure_server

console = Console(highlight=False)


def main() -> int:
    """Run the demo; returns the exit code."""
    site_file = os.environ.get("HANDOVER_SITE", str(DEFAULT_SITE))
    missing = missing_prerequisites()
    if missing:
        console.print("[red]the demo needs:[/red] " + "; ".join(missing))
        return 1
    site = load_site(site_file)
    lab = Lab(site)
    if lab.is_up():
        console.print(f"[dim]lab already up (site {site.site}); using it[/dim]")
    else:
        try:
            report = lab.up(progress=lambda m: console.print(f"[dim]{m}[/dim]"))
        except LabError as exc:
            console.print(f"[red]lab:[/red] {exc}")
            return 1
        console.print(
            f"lab up: {len(report['hosts'])} hosts, {report['agents']} agents serving, "
            f"in {report['seconds']['total']:.1f} s"
        )
    console.print("[dim]starting (or reusing) a local Prefect server...[/dim]")
    url, started = ensure_server()
    os.environ["PREFECT_API_URL"] = url
    from flows.site_snapshot import site_snapshot

    time.sleep(2)  # let a few transfers start, so the snapshot shows some
    snap = site_snapshot(site_file)
    console.print()
    console.rule(f"live snapshot of site {site.site}, read over SSH by the site-snapshot flow")
    for h in snap.hosts:
        agents = ", ".join(short(a.name) for a in h.agents) or "none"
        transfers = ", ".join(f"{c} {n}" for c, n in h.transfers.items()) or "none"
        console.print(
            escape(
                f"{h.host}: agents: {agents}; transfers: {transfers}; {len(h.disabled)} disabled"
            )
        )
    console.print("channels: " + ", ".join(f"{c} {s}" for c, s in sorted(snap.channels.items())))
    console.print()
    console.rule("the lab's own view")
    _print_status(lab.status())
    score = lab.score()
    console.print(
        f"score: {score.jobs_done} jobs done, {score.jobs_lost} lost, "
        f"{len(score.agents_running_twice)} agents serving twice"
    )
    ui = url.removesuffix("/api")
    console.print(
        f"\nPrefect UI: {ui} (flow run 'site-snapshot' and its artifacts)"
        + (" [dim](server started by the demo)[/dim]" if started else "")
        + "\nTear down: .venv/bin/handover lab down && .venv/bin/handover server stop"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
