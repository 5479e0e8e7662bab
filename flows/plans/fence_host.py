"""fence-host's plan: a host back after an emergency move must not serve its moved agents (pure).

Every agent of the host that runs on its other host is listed in the host's `.disabled` file (so
a reboot does not start it), and those that also run on the host are stopped there.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from config.site import Site
from flows.plans.model import Chain, Phase, Plan
from flows.plans.snapshot import HostWithPartners
from flows.plans.verbs import step

PROCEDURE = "fence-host"


class FencePlan(Plan):
    """The plan of fence-host."""

    procedure: str = PROCEDURE
    host: str
    #: agents of the host served by their other host
    moved: list[str] = Field(default_factory=list)
    #: of those, the ones that also run on the host
    twice: list[str] = Field(default_factory=list)
    configured: int = 0


class FenceRequest(BaseModel):
    """What fence-host is asked: the host that came back."""

    host: str


def plan_fence_host(site: Site, snap: HostWithPartners, req: FenceRequest) -> FencePlan:
    """Plan fence-host for `req.host`.

    Args:
        site: the site.
        snap: the host's snapshot (it must be reachable) and its agents' other hosts'.
        req: the host that came back.
    """
    host, host_snap, others = req.host, snap.host, snap.partners
    configured = site.agents_configured_on(host)
    base = dict(site=site.site, host=host, configured=len(configured))
    if host_snap is None or not host_snap.reachable:
        error = host_snap.error if host_snap is not None else "not read"
        return FencePlan(
            **base,
            ok=False,
            problems=[f"{host} is not reachable ({error}); run fence-host again when it is"],
        )
    if host_snap.disabled_error:
        return FencePlan(
            **base,
            ok=False,
            problems=[f"{host_snap.disabled_error}; fix the file, then run fence-host again"],
        )
    other = {a.name: a.backup if a.primary == host else a.primary for a in configured}
    moved = [n for n, o in other.items() if o in others.where(n)]
    twice = [n for n in moved if host_snap.runs(n)]
    steps = []
    if moved:
        steps.append(step(site, f"{host}/write-disabled", "write-disabled", host, moved))
    if twice:
        steps.append(step(site, f"{host}/stop", "stop", host, twice))
    notes = [] if moved else [f"{host}: no agent of it runs on a backup; nothing to fence"]
    return FencePlan(
        **base,
        ok=True,
        moved=moved,
        twice=twice,
        notes=notes,
        phases=[Phase(name=f"fence {host}", chains=[Chain(name=host, steps=steps)])]
        if steps
        else [],
    )
