"""`handover rehearse clean-move|rolling-upgrade`: tonight's intervention, planned for the real
site, run on its twin.

1. The real site's plan: from a snapshot of the real site (read over SSH, read-only; or a
   recorded one, `--snapshot`) and the run's parameters under the site's policy, as a run
   would plan it (`Rehearsable`: the clean move's request is `flows.clean_move.move_request`;
   the rolling upgrade's reads each host's installed version too).
2. The twin (`infra.lab.twin`): a lab that mirrors the site, its load shaped on that snapshot
   (and, for an upgrade, each host on its installed version); its own snapshot and plan with
   the same parameters; the two plans compared (`flows.plans.rehearsal.compare_plans`): any
   difference is listed, with why the twin makes it or "unexplained".
3. The same procedure run on the twin, with nothing asked, and the lab's score: jobs lost,
   agents serving twice, each channel's downtime.
4. The report, side by side: printed, and a Prefect artifact an approver can be shown; the
   record (`RehearsalRecord`) kept as the site's last rehearsal of the procedure, which a run of
   a site with ``rehearse: required`` checks (the clean move). The twin is stopped at the end
   (`keep`: left up).

A rehearsal passes when the plans match, the run on the twin completed, no job was lost and no
agent served twice.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow
from pydantic import BaseModel

from config.site import Site
from flows.plans.clean_move import Mode, plan_clean_move
from flows.plans.model import Plan
from flows.plans.rehearsal import (
    PlanComparison,
    RehearsalRecord,
    compare_plans,
    fingerprint,
    plan_shape,
)
from flows.plans.snapshot import SiteSnapshot
from infra.lab.twin import busiest, twin_load


class Rehearsal(BaseModel):
    """What a rehearsal found."""

    record: RehearsalRecord
    real_plan: Plan
    twin_plan: Plan | None = None
    comparison: PlanComparison | None = None
    #: each channel's downtime the real plan estimates (the clean move's)
    estimated_s: dict[str, float] = {}
    #: how the run on the twin ended (its state's message)
    twin_run: str = ""
    twin_site_file: str = ""
    #: the twin's load shaped on the real snapshot, in words (`infra.lab.twin.TwinLoad`)
    load: str = ""
    #: how many times shorter than the site's the twin's transfers were (1: as long)
    scale: float = 1.0
    markdown: str = ""


@dataclass(frozen=True)
class Rehearsable:
    """How one procedure is rehearsed: its snapshot, its plan, its run on the twin."""

    #: the procedure's name
    name: str
    #: what is rehearsed, in words
    what: str
    #: a snapshot of a site (the real one, or the twin) read through a shell
    read: Callable[[Any], BaseModel]
    #: a recorded snapshot (`--snapshot`) from its JSON
    parse: Callable[[str], BaseModel]
    #: the site snapshot within it (the twin's load is shaped on its running transfers)
    site_snapshot: Callable[[Any], SiteSnapshot]
    #: the plan a run would make on a site from a snapshot
    plan: Callable[[Site, Any], Plan]
    #: the procedure run on the twin (its site file), asking nobody
    run: Callable[[str], Any]


def clean_move_rehearsal(from_host: str, to_host: str, mode: Mode) -> Rehearsable:
    """A clean move of `from_host`'s agents to `to_host` (`flows.clean_move`)."""
    from flows.clean_move import clean_move, move_request
    from tasks.site_state import snapshot_site

    def plan(site: Site, snap: Any) -> Plan:
        req = move_request(site, from_host=from_host, to_host=to_host, mode=mode)
        return plan_clean_move(site, snap, req)

    return Rehearsable(
        name="clean-move",
        what=f"the clean move {from_host} -> {to_host} ({mode})",
        read=snapshot_site,
        parse=SiteSnapshot.model_validate_json,
        site_snapshot=lambda snap: snap,
        plan=plan,
        run=lambda twin_file: clean_move(
            site_file=twin_file,
            from_host=from_host,
            to_host=to_host,
            mode=mode,
            pause_for_approval=False,
            requested_by="handover rehearse",
            return_state=True,
        ),
    )


def upgrade_rehearsal(version: str | None, hosts: list[str] | None = None) -> Rehearsable:
    """A rolling upgrade to `version` (default: the site's target) (`flows.rolling_upgrade`)."""
    from flows.plans.rolling_upgrade import (
        UpgradeRequest,
        UpgradeSnapshot,
        plan_rolling_upgrade,
        upgrade_hosts,
    )
    from flows.rolling_upgrade import rolling_upgrade, snapshot_upgrade

    def plan(site: Site, snap: Any) -> Plan:
        up = site.upgrade
        req = UpgradeRequest(
            version=version or up.target_version,
            hosts=hosts or [],
            batch=up.batch,
            canary=up.canary,
        )
        return plan_rolling_upgrade(site, snap, req)

    return Rehearsable(
        name="rolling-upgrade",
        what=f"the rolling upgrade to version {version or 'the site target'}",
        read=lambda shell: snapshot_upgrade(shell, upgrade_hosts(shell.site)),
        parse=UpgradeSnapshot.model_validate_json,
        site_snapshot=lambda snap: snap.site,
        plan=plan,
        run=lambda twin_file: rolling_upgrade(
            site_file=twin_file,
            version=version,
            hosts=hosts,
            pause_for_approval=False,
            requested_by="handover rehearse",
            return_state=True,
        ),
    )


#: how long the twin's load may take to look like the real snapshot's
LOAD_WAIT_S = 20.0


def _loaded(shell: Any, want: dict[str, int], progress: Callable[[str], None]) -> None:
    """Wait until every channel that ran transfers in the real snapshot runs some on the twin
    (bounded by `LOAD_WAIT_S`: the plan's steps do not depend on it, its estimates do)."""
    from tasks.site_state import snapshot_site

    deadline = time.monotonic() + LOAD_WAIT_S
    while True:
        have = busiest(snapshot_site(shell))
        idle = sorted(c for c, n in want.items() if n > 0 and have.get(c, 0) == 0)
        if not idle or time.monotonic() > deadline:
            if idle:
                progress(f"the twin's load: no transfer running yet on {', '.join(idle)}")
            return
        time.sleep(0.5)


def rehearse(
    site_file: Path,
    proc: Rehearsable,
    *,
    snapshot_file: Path | None = None,
    octet: int = 240,
    state_dir: Path | None = None,
    keep: bool = False,
    progress: Callable[[str], None] = lambda m: None,
) -> Rehearsal:
    """Rehearse `proc` for the site in `site_file` on its twin (module docstring)."""
    from config.loader import load_site
    from infra.lab.lab import Lab
    from infra.lab.twin import write_twin
    from tasks.remote import SiteShell

    real = load_site(site_file)
    progress(
        "the real site's snapshot: "
        + (str(snapshot_file) if snapshot_file else "read over SSH (read-only)")
    )
    if snapshot_file is not None:
        real_snap = proc.parse(snapshot_file.read_text())
    else:
        with SiteShell(real) as shell:
            real_snap = proc.read(shell)
    real_plan = proc.plan(real, real_snap)
    record = RehearsalRecord(
        site=real.site,
        procedure=proc.name,
        fingerprint=fingerprint(real_plan),
        at=dt.datetime.now(dt.UTC),
        passed=False,
        plans_match=False,
        jobs_lost=0,
        agents_twice=0,
    )
    estimated = dict(getattr(real_plan, "estimated_downtime_s", {}))
    if not real_plan.ok:
        out = Rehearsal(
            record=record,
            real_plan=real_plan,
            estimated_s=estimated,
            twin_run="not run: the real plan is refused: " + "; ".join(real_plan.problems),
        )
        out.markdown = report_markdown(out)
        return out
    shaped = twin_load(proc.site_snapshot(real_snap))
    load = shaped.sentence()
    progress(load)
    with tempfile.TemporaryDirectory(prefix="handover-rehearse-") as work:
        snap_file = Path(work) / "real-snapshot.json"
        snap_file.write_text(real_snap.model_dump_json())
        written = write_twin(
            site_file,
            octet=octet,
            out=Path(work) / "twin.yaml",
            snapshot_file=snap_file,
            state_dir=state_dir,
        )
        lab = Lab.from_file(written)
        lab.up(progress=progress)
    # the lab keeps its own copy of the twin's site file, in its state directory
    twin_file = lab.paths.site_file
    progress(f"the twin: {twin_file}")
    try:
        twin = lab.site
        with SiteShell(twin) as shell:
            _loaded(shell, busiest(proc.site_snapshot(real_snap)), progress)
            twin_snap = proc.read(shell)
        twin_plan = proc.plan(twin, twin_snap)
        comparison = compare_plans(real_plan, twin_plan)
        progress(
            "the plans match"
            if comparison.matches
            else f"the plans differ: {len(comparison.unexplained)} unexplained difference(s)"
        )
        lab.score(reset=True)
        progress(f"{proc.what} on the twin")
        state = proc.run(str(twin_file))
        score = lab.score()
        completed = state.is_completed()
        twice = len(score.agents_running_twice)
        record = record.model_copy(
            update={
                "passed": comparison.matches and completed and score.jobs_lost == 0 and twice == 0,
                "plans_match": comparison.matches,
                "jobs_lost": score.jobs_lost,
                "agents_twice": twice,
                "downtime_s": {c: round(s, 2) for c, s in score.downtime_s.items() if s > 0},
            }
        )
        out = Rehearsal(
            record=record,
            real_plan=real_plan,
            twin_plan=twin_plan,
            comparison=comparison,
            estimated_s=estimated,
            twin_run=f"{state.name}: {state.message or ''}".strip(),
            twin_site_file=str(twin_file),
            load=load,
            scale=shaped.scale,
        )
    finally:
        if not keep:
            lab.down()
            lab.remove_state()
    out.record = _sealed(real, out.record, progress)
    out.markdown = report_markdown(out)
    return out


def _sealed(
    site: Site, record: RehearsalRecord, progress: Callable[[str], None]
) -> RehearsalRecord:
    """The record with its seal (`flows.seals.rehearsal_seal`), keyed from the real site's
    secrets; unsealed, and said so, when they cannot be read here."""
    from flows.seals import rehearsal_seal, site_rehearsal_seal_key

    key = site_rehearsal_seal_key(site)
    if key is None:
        progress(
            "the site's webhook secret and Slack signing secret cannot be read here: the record "
            "is not sealed, and a run whose policy requires a rehearsal will not count it"
        )
        return record
    return record.model_copy(update={"seal": rehearsal_seal(key, *record.sealed_fields)})


@flow(name="rehearsal", log_prints=False)
def record_rehearsal(record: RehearsalRecord, markdown: str) -> RehearsalRecord:
    """Keep a rehearsal: its report as this run's artifact (what an approver is shown), and its
    record as the site's last rehearsal of the procedure (naming this run)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    from tasks.rehearsals import keep_rehearsal, variable_name

    key = variable_name(record.site, record.procedure).replace("_", "-")
    create_markdown_artifact(key=key, markdown=markdown, description=record.sentence())
    kept = record.model_copy(update={"report": f"run {flow_run.name} (artifact {key})"})
    keep_rehearsal(kept)
    return kept


def publish(rehearsal: Rehearsal) -> RehearsalRecord:
    """The report as a Prefect artifact, and the record kept (`record_rehearsal`)."""
    return record_rehearsal(rehearsal.record, rehearsal.markdown)


def report_markdown(r: Rehearsal) -> str:
    """The rehearsal's report: verdict, the plans side by side, differences, the score."""
    rec = r.record
    lines = [
        f"# Rehearsal of a {rec.procedure} of {rec.site} on its twin",
        "",
        f"**{'PASSED' if rec.passed else 'FAILED'}**: {rec.sentence()}",
        f"- plan fingerprint `{rec.fingerprint}`; the run on the twin: {r.twin_run or '-'}",
        *([f"- {r.load}"] if r.load else []),
        "",
        "| step | real site | twin |",
        "|---|---|---|",
    ]
    real = plan_shape(r.real_plan)
    twin = plan_shape(r.twin_plan) if r.twin_plan else []
    for i in range(max(len(real), len(twin))):
        a = real[i] if i < len(real) else ""
        b = twin[i] if i < len(twin) else ""
        lines.append(f"| {i + 1} | {a} | {'same' if a == b else b} |")
    if r.comparison is not None:
        lines += ["", "Differences (addresses aside):"]
        lines += [
            f"- `{d.path}`: {d.real[:80]} / {d.twin[:80]}: " + (d.explained or "**unexplained**")
            for d in r.comparison.differences
        ] or ["- none"]
    scaled = r.scale > 1
    if rec.downtime_s:
        head = "| channel | downtime on the twin | the plan's estimate |"
        rule = "|---|---|---|"
        if scaled:
            head += f" the twin's, {r.scale:.3g} times longer |"
            rule += "---|"
        lines += ["", head, rule]
        for c, s in sorted(rec.downtime_s.items()):
            est = f"{r.estimated_s[c]:.2f} s" if c in r.estimated_s else "-"
            lines.append(
                f"| {c} | {s:.2f} s | {est} |" + (f" {s * r.scale:.1f} s |" if scaled else "")
            )
    lines += [
        "",
        "The real site's downtime follows its own transfers' durations: the plan's estimate is "
        "its figure; the twin's measures the same steps under the snapshot's load"
        + (
            f", its transfers {r.scale:.3g} times shorter than the site's: the last column puts "
            "the twin's on the site's clock (a bound: the steps' own seconds are scaled too)."
            if scaled
            else "."
        ),
    ]
    return "\n".join(lines) + "\n"


def as_json(r: Rehearsal) -> str:
    """The rehearsal as JSON (`--json`)."""
    return json.dumps(
        {
            "record": r.record.model_dump(mode="json"),
            "twin_run": r.twin_run,
            "differences": [
                d.model_dump() for d in (r.comparison.differences if r.comparison else [])
            ],
            "real_steps": plan_shape(r.real_plan),
            "twin_steps": plan_shape(r.twin_plan) if r.twin_plan else [],
        },
        indent=2,
    )
