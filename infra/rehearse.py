"""`handover rehearse clean-move`: tonight's move, planned for the real site, run on its twin.

1. The real site's plan: from a snapshot of the real site (read over SSH, read-only; or a
   recorded one, `--snapshot`) and the run's parameters under the site's policy, as a run
   would plan it (`flows.clean_move.move_request`).
2. The twin (`infra.lab.twin`): a lab that mirrors the site, its load shaped on that snapshot;
   its own snapshot and plan with the same parameters; the two plans compared
   (`flows.plans.rehearsal.compare_plans`): any difference is listed, with why the twin makes it
   or "unexplained".
3. The same procedure run on the twin, with nothing asked, and the lab's score: jobs lost,
   agents serving twice, each channel's downtime.
4. The report, side by side: printed, and a Prefect artifact an approver can be shown; the
   record (`RehearsalRecord`) kept as the site's last rehearsal of the procedure, which a run of
   a site with ``rehearse: required`` checks. The twin is stopped at the end (`keep`: left up).

A rehearsal passes when the plans match, the run on the twin completed, no job was lost and no
agent served twice.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow
from pydantic import BaseModel

from flows.plans.clean_move import Mode, MovePlan, plan_clean_move
from flows.plans.rehearsal import (
    PlanComparison,
    RehearsalRecord,
    compare_plans,
    fingerprint,
    plan_shape,
)
from flows.plans.snapshot import SiteSnapshot
from infra.lab.twin import busiest


class Rehearsal(BaseModel):
    """What `rehearse_clean_move` found."""

    record: RehearsalRecord
    real_plan: MovePlan
    twin_plan: MovePlan | None = None
    comparison: PlanComparison | None = None
    #: how the run on the twin ended (its state's message)
    twin_run: str = ""
    twin_site_file: str = ""
    markdown: str = ""


def _snapshot(site_file: Path, snapshot_file: Path | None) -> SiteSnapshot:
    from config.loader import load_site
    from tasks.remote import SiteShell
    from tasks.site_state import snapshot_site

    if snapshot_file is not None:
        return SiteSnapshot.model_validate_json(snapshot_file.read_text())
    with SiteShell(load_site(site_file)) as shell:
        return snapshot_site(shell)


#: how long the twin's load may take to look like the real snapshot's
LOAD_WAIT_S = 20.0


def _loaded(shell: Any, want: dict[str, int], progress: Callable[[str], None]) -> SiteSnapshot:
    """The twin's snapshot once every channel that ran transfers in the real snapshot runs some
    (bounded by `LOAD_WAIT_S`: the plan's steps do not depend on it, its estimates do)."""
    from tasks.site_state import snapshot_site

    deadline = time.monotonic() + LOAD_WAIT_S
    while True:
        snap = snapshot_site(shell)
        have = busiest(snap)
        idle = sorted(c for c, n in want.items() if n > 0 and have.get(c, 0) == 0)
        if not idle or time.monotonic() > deadline:
            if idle:
                progress(f"the twin's load: no transfer running yet on {', '.join(idle)}")
            return snap
        time.sleep(0.5)


def rehearse_clean_move(
    site_file: Path,
    *,
    from_host: str,
    to_host: str,
    mode: Mode = "pipelined",
    snapshot_file: Path | None = None,
    octet: int = 240,
    state_dir: Path | None = None,
    keep: bool = False,
    progress: Callable[[str], None] = lambda m: None,
) -> Rehearsal:
    """Rehearse a clean move of the site in `site_file` on its twin (module docstring)."""
    from config.loader import load_site
    from flows.clean_move import clean_move, move_request
    from infra.lab.lab import Lab
    from infra.lab.twin import write_twin
    from tasks.remote import SiteShell

    real = load_site(site_file)
    progress(
        "the real site's snapshot: "
        + (str(snapshot_file) if snapshot_file else "read over SSH (read-only)")
    )
    real_snap = _snapshot(site_file, snapshot_file)
    real_req = move_request(real, from_host=from_host, to_host=to_host, mode=mode)
    real_plan = plan_clean_move(real, real_snap, real_req)
    at = dt.datetime.now(dt.UTC)
    record = RehearsalRecord(
        site=real.site,
        procedure="clean-move",
        fingerprint=fingerprint(real_plan),
        at=at,
        passed=False,
        plans_match=False,
        jobs_lost=0,
        agents_twice=0,
    )
    if not real_plan.ok:
        out = Rehearsal(
            record=record,
            real_plan=real_plan,
            twin_run="not run: the real plan is refused: " + "; ".join(real_plan.problems),
        )
        out.markdown = report_markdown(out)
        return out
    work = Path(tempfile.mkdtemp(prefix="handover-rehearse-"))
    snap_file = work / "real-snapshot.json"
    snap_file.write_text(real_snap.model_dump_json())
    twin_file = write_twin(
        site_file, octet=octet, out=work / "twin.yaml", snapshot_file=snap_file, state_dir=state_dir
    )
    progress(f"the twin: {twin_file}")
    lab = Lab.from_file(twin_file)
    lab.up(progress=progress)
    try:
        twin = lab.site
        with SiteShell(twin) as shell:
            twin_snap = _loaded(shell, busiest(real_snap), progress)
        twin_req = move_request(twin, from_host=from_host, to_host=to_host, mode=mode)
        twin_plan = plan_clean_move(twin, twin_snap, twin_req)
        comparison = compare_plans(real_plan, twin_plan)
        progress(
            "the plans match"
            if comparison.matches
            else f"the plans differ: {len(comparison.unexplained)} unexplained difference(s)"
        )
        lab.score(reset=True)
        progress(f"the clean move {from_host} -> {to_host} ({mode}) on the twin")
        state = clean_move(
            site_file=str(twin_file),
            pause_for_approval=False,
            requested_by="handover rehearse",
            return_state=True,
            from_host=from_host,
            to_host=to_host,
            mode=mode,
        )
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
            twin_run=f"{state.name}: {state.message or ''}".strip(),
            twin_site_file=str(twin_file),
        )
    finally:
        if not keep:
            lab.down()
            lab.remove_state()
    out.markdown = report_markdown(out)
    return out


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
        f"# Rehearsal of a clean move of {rec.site} on its twin",
        "",
        f"**{'PASSED' if rec.passed else 'FAILED'}**: {rec.sentence()}",
        f"- plan fingerprint `{rec.fingerprint}`; the run on the twin: {r.twin_run or '-'}",
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
    if rec.downtime_s:
        lines += ["", "| channel | downtime on the twin | the plan's estimate |", "|---|---|---|"]
        est = r.real_plan.estimated_downtime_s
        for c, s in sorted(rec.downtime_s.items()):
            lines.append(f"| {c} | {s:.2f} s | {est.get(c, 0.0):.2f} s |")
    lines += [
        "",
        "The real site's downtime follows its own transfers' durations: the plan's estimate is "
        "its figure; the twin's measures the same steps under the snapshot's load.",
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
