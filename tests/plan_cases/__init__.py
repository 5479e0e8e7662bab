"""Recorded-state cases for the planners: snapshots from the lab in, expected plans out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from config.loader import load_site
from config.site import Site
from flows.plans.clean_move import MoveRequest, plan_clean_move
from flows.plans.clean_move_compensation import compensate_clean_move
from flows.plans.emergency_move import EmergencyRequest, partners, plan_emergency_move
from flows.plans.fence_host import FenceRequest, plan_fence_host
from flows.plans.model import Failure, Ledger
from flows.plans.snapshot import HostWithPartners, SiteSnapshot

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SITE_FILE = ROOT / "config" / "sites" / "lab.yaml"


def site() -> Site:
    """The lab site the snapshots were recorded on."""
    return load_site(SITE_FILE)


def cases() -> dict[str, dict[str, Any]]:
    """Every case, by name."""
    data: dict[str, dict[str, Any]] = yaml.safe_load((HERE / "cases.yaml").read_text())
    return data


def snapshot(name: str) -> SiteSnapshot:
    """A recorded snapshot."""
    return SiteSnapshot.model_validate_json((HERE / "snapshots" / f"{name}.json").read_text())


def _part(snap: SiteSnapshot, hosts: list[str]) -> SiteSnapshot:
    return snap.model_copy(update={"hosts": [h for h in snap.hosts if h.host in hosts]})


def run_case(case: dict[str, Any]) -> Any:
    """The planner's answer for a case, as JSON data."""
    s = site()
    snap = snapshot(case["snapshot"])
    if "transfer_eta" in case:  # what the site's database said the running transfers need
        snap = snap.model_copy(update={"transfer_eta": case["transfer_eta"]})
    req = case["request"]
    proc = case["procedure"]
    if proc in ("clean-move", "compensation"):
        move = MoveRequest.model_validate(req)
        plan = plan_clean_move(s, _part(snap, [move.from_host, move.to_host]), move)
        if proc == "clean-move":
            return plan.model_dump(mode="json")
        chain = next(c for p in plan.phases for c in p.chains if c.name == case["chain"])
        ledger = Ledger.after(plan, case["after_step"])
        failure = Failure(chain=chain, kind=case["reason"], message=f"{case['reason']}: test")
        remedies = compensate_clean_move(s, plan, ledger, failure)
        return {
            "ledger": ledger.model_dump(mode="json"),
            "remedies": [r.model_dump(mode="json") for r in remedies],
        }
    host = req["host"]
    if proc == "emergency-move":
        own = snap.host(host) if req["ssh_ok"] else None
        plan = plan_emergency_move(
            s,
            HostWithPartners(host=own, partners=_part(snap, partners(s, host))),
            EmergencyRequest(host=host, reach=req["reach"]),
        )
        return plan.model_dump(mode="json")
    if proc == "fence-host":
        seen = HostWithPartners(host=snap.host(host), partners=_part(snap, partners(s, host)))
        return plan_fence_host(s, seen, FenceRequest(host=host)).model_dump(mode="json")
    raise ValueError(f"unknown procedure {proc!r}")


def expected_path(name: str) -> Path:
    """Where a case's expected answer is kept."""
    return HERE / "expected" / f"{name}.json"


def dumps(data: Any) -> str:
    """The stable text of an answer (what the expected files hold)."""
    return json.dumps(data, indent=1, sort_keys=True) + "\n"
