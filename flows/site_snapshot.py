"""Flow `site-snapshot`: what runs where, read live from every host (read-only).

The first thing an operator wants before any procedure: which agents run on which host, how many
transfers each channel is running, which agents are disabled where, and each channel's state. The
flow publishes the snapshot as a table artifact and returns it typed.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.run_site import load_run_site
from tasks.remote import SiteShell
from tasks.site_state import SiteSnapshot, snapshot_site_task


def snapshot_markdown(snap: SiteSnapshot) -> str:
    """A short markdown report of a snapshot (pure)."""
    lines = [f"# Site {snap.site} at {snap.taken_at:%Y-%m-%d %H:%M:%S} UTC", ""]
    lines += ["| host | reachable | agents | transfers | disabled |", "|---|---|---|---|---|"]
    for h in snap.hosts:
        reach = "yes" if h.reachable else f"**no**: {h.error}"
        agents = "<br>".join(a.name for a in h.agents) or "-"
        transfers = ", ".join(f"{c}: {n}" for c, n in h.transfers.items()) or "-"
        disabled = "<br>".join(h.disabled) or "-"
        lines.append(f"| {h.host} | {reach} | {agents} | {transfers} | {disabled} |")
    if snap.channels:
        lines += [
            "",
            "Channels: " + ", ".join(f"{c} {s}" for c, s in sorted(snap.channels.items())),
        ]
    return "\n".join(lines)


@flow(name="site-snapshot", log_prints=False)
def site_snapshot(site_file: str, hosts: list[str] | None = None) -> SiteSnapshot:
    """Read every host of the site (or the given ones) and publish what runs where.

    Args:
        site_file: path of the site file (validated at load).
        hosts: only these hosts (default: all).

    Returns:
        The snapshot. Unreachable hosts are part of it (``reachable=False`` and the error).
    """
    logger = get_run_logger()
    site = load_run_site(site_file)
    with SiteShell(site) as shell:
        snap = snapshot_site_task(shell, hosts)
    for h in snap.hosts:
        if h.reachable:
            logger.info(
                "%s: %d agents running, %d transfers, %d disabled",
                h.host,
                len(h.agents),
                sum(h.transfers.values()),
                len(h.disabled),
            )
        else:
            logger.warning("%s: unreachable: %s", h.host, h.error)
    create_table_artifact(
        key=f"{site.site}-snapshot",
        table=[
            {
                "host": h.host,
                "reachable": h.reachable,
                "agents": ", ".join(a.name for a in h.agents),
                "transfers": sum(h.transfers.values()),
                "disabled": ", ".join(h.disabled),
            }
            for h in snap.hosts
        ],
        description=f"Agents and transfers per host of site {site.site}",
    )
    create_markdown_artifact(key=f"{site.site}-snapshot-report", markdown=snapshot_markdown(snap))
    return snap
