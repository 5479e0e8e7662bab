"""The geo failover: a replicated tool moved from the site it is active at to another, through
DNS with several masters. Its request, plan and compensation.

Where the tool is active is read from the masters: the answer with the newest epoch (the TXT
record ``epoch=N`` beside each name) names an address, and the address names a site. The new
epoch is one more than the newest the masters or the databases have seen.

* **planned** (the active site's database answers and is the primary): its database is set
  read-only (the tool there refuses writes), the target's replica waits until it has applied
  everything the source wrote (bounded by `geo.catch_up_s`), is promoted with the new epoch
  (its fence in ``handover_fence``), the names move on every master, the resolvers are
  awaited (the TTL), and the old primary becomes a replica of the new one. No acknowledged
  write is lost: the source stopped writing before the target took over.
* **failover** (the active site's database does not answer): the target is promoted with the
  new epoch and the names move on the masters that answer. The loss window is what the
  target lacked when the site was lost: the last replication reading says how far behind it
  was. Within the tool's `max_lag_s` (or the request's) the failover goes ahead; beyond it, or
  with no reading, a human approves the stated window. The lost site is fenced by the epoch:
  its tool accepts a write only when its database's epoch is the newest the masters answer.
* **failback** (`flows.plans.geo_failback`): the site to return to is rebuilt as a replica of
  the active one unless it is a healthy one already, then a planned failover moves it back.

A master that does not answer does not stop the failover: the names move on the masters that
answer, at least `min_masters` of the target site's and of every other site with a master that
answers; the ones left behind are reported and the drift watch brings them in line.

Pre-checks (the plan is refused, nothing changes): the site declares `geo:` with the tool and
the target; at least one master answers and every master that answers accepts the TSIG key;
the answers name a site of the tool; the target's database answers and replicates from the
active site (or was already promoted by an earlier run of the same failover, which then
resumes); a planned failover needs the source's database to be the primary.

Compensation (`compensate_geo`): a planned failover that failed before the promotion sets the
source's database writable again (nothing moved). After the promotion nothing is undone: the
report says how to finish (running the failover again resumes it).

Nothing here does I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from config.site import Site, Tool
from flows.plans.geo_state import GeoSnapshot, NameAnswer
from flows.plans.model import AnyStep, Chain, Failure, Ledger, Phase, Plan, Remedy
from flows.plans.verbs import (
    AwaitResolvers,
    DbReadOnly,
    PromoteReplica,
    ReplicateFrom,
    RepointNames,
    WaitApplied,
)

PROCEDURE = "geo-failover"
FAILBACK = "geo-failback"

Mode = Literal["planned", "failover"]


class GeoRequest(BaseModel):
    """What was asked."""

    tool: str
    #: the site to move the tool to
    to: str
    #: planned or failover; None: planned when the active site's database is the primary
    mode: Mode | None = None
    #: the loss window accepted without asking (default: the tool's `max_lag_s`)
    max_lag_s: float | None = None
    reason: str = ""
    #: started by the monitoring path (the automatic control switch)
    automatic: bool = False
    #: an automatic run a human decides: why (another automatic failover was too recent)
    flapping: str = ""
    #: where a rebuilt replica's old content is kept
    keep_dir: str = "/var/lib/handover/geo-kept"


class GeoPlan(Plan):
    """The geo failover's plan: which tool, from where to where, with which epoch."""

    procedure: str = PROCEDURE
    tool: str = ""
    mode: Mode | None = None
    from_site: str | None = None
    to_site: str | None = None
    from_address: str | None = None
    to_address: str | None = None
    names: list[str] = Field(default_factory=list)
    old_epoch: int | None = None
    new_epoch: int | None = None
    #: the target already serves with the newest epoch: nothing to do
    already_done: bool = False
    #: the target was promoted by an earlier run: this one resumes after the promotion
    resumed: bool = False
    #: the target's lag at the last reading (failover), and when it was read
    lag_s: float | None = None
    lag_transactions: int | None = None
    lag_read_at: str = ""
    #: the loss window said to the approver (failover)
    loss_window: str = ""
    #: the loss window exceeds what may be accepted without asking: a human approves it
    needs_loss_approval: bool = False
    #: masters that did not answer when planned (they are tried again, then left behind)
    masters_silent: list[str] = Field(default_factory=list)
    #: the remap check's findings, as sentences
    remap: list[str] = Field(default_factory=list)


def current_answer(answers: list[NameAnswer], name: str) -> NameAnswer | None:
    """The answer with the newest epoch for `name` among the masters that answered (pure)."""
    ok = [a for a in answers if a.name == name and not a.error and len(a.addresses) == 1]
    return max(ok, key=lambda a: a.epoch or 0) if ok else None


def refused(plan: GeoPlan, *problems: str) -> GeoPlan:
    """`plan` refused with `problems` (no steps)."""
    plan.problems += list(problems)
    plan.ok = False
    return plan


def plan_geo_failover(site: Site, snap: GeoSnapshot, req: GeoRequest) -> GeoPlan:
    """The geo failover's plan (pure; see the module docstring).

    Args:
        site: the site (with `geo:`).
        snap: the masters' answers, the databases, the health pages, the last lag reading.
        req: the tool, the target, the mode.

    Returns:
        A plan; ``ok`` False with its problems when a pre-check failed (no steps).
    """
    plan = GeoPlan(site=site.site, ok=False, tool=req.tool, to_site=req.to)
    if site.geo is None:
        return refused(
            plan, f"site {site.site} declares no tools replicated between sites (`geo:`)"
        )
    geo = site.geo
    try:
        tool = geo.tool(req.tool)
    except KeyError as exc:
        return refused(plan, str(exc.args[0]))
    if req.to not in tool.sites:
        return refused(
            plan, f"{req.to} is not a site of {tool.name} (sites: {', '.join(tool.sites)})"
        )
    plan.names = list(tool.names)
    plan.to_address = tool.sites[req.to].address
    silent = sorted({f"{a.site} {a.master}" for a in snap.names if a.error})
    plan.masters_silent = silent
    answering = {a.master for a in snap.names if not a.error}
    if not answering:
        return refused(
            plan,
            "no DNS master answered for "
            + ", ".join(tool.names)
            + ": "
            + "; ".join(sorted({f"{a.master}: {a.error}" for a in snap.names})),
        )
    refused_keys = [
        f"{m}: {snap.key_errors.get(m, 'the TSIG key was refused')}"
        for m, ok in snap.key_ok.items()
        if ok is False
    ]
    if refused_keys:
        return refused(
            plan,
            f"a DNS master refused the TSIG key {geo.tsig_key_name!r} ("
            + "; ".join(refused_keys)
            + "): it could never take the change; fix its key (a `key` clause and "
            "`allow-update`) and plan again",
        )
    first = current_answer(snap.names, tool.names[0])
    assert first is not None  # some master answered
    from_site = tool.site_of(first.addresses[0])
    if from_site is None:
        return refused(
            plan,
            f"{tool.names[0]} points at {first.addresses[0]} (epoch {first.epoch}, on "
            f"{first.master}), which is no site of {tool.name} ("
            + ", ".join(f"{s} {p.address}" for s, p in tool.sites.items())
            + "); repoint it by hand or fix the site file",
        )
    plan.from_site, plan.from_address = from_site, tool.sites[from_site].address
    dns_epoch = max((a.epoch or 0) for a in snap.names if not a.error)
    fence_epochs = [d.fence_epoch for d in snap.databases.values() if d.fence_epoch is not None]
    old_epoch = max([dns_epoch, *fence_epochs])
    plan.old_epoch = old_epoch
    target = snap.databases.get(req.to)
    source = snap.databases.get(from_site)
    # resumed: the target was promoted by an earlier run whose names did not all move
    promoted_here = (
        target is not None
        and target.primary
        and target.fence_site == req.to
        and target.fence_epoch is not None
        and target.fence_epoch == old_epoch
    )
    if from_site == req.to or (promoted_here and dns_epoch == old_epoch):
        return _already(plan, tool, snap, req, old_epoch)
    if target is None or not target.reachable:
        return refused(
            plan,
            f"the database of {tool.name} at {req.to} does not answer"
            + (f" ({target.error})" if target is not None else "")
            + "; the tool cannot move there",
        )
    source_db = tool.sites[from_site]
    source_server = f"{source_db.db_host}:{source_db.db_port or tool.database.port}"
    if not promoted_here and not (target.is_replica and target.source == source_server):
        return refused(
            plan,
            f"the database of {tool.name} at {req.to} does not replicate from {from_site} "
            f"({source_server})"
            + (f" but from {target.source}" if target.is_replica else ": it is no replica")
            + f"; rebuild it as {from_site}'s replica (`handover run geo-failback --service "
            f"{tool.name} --to {req.to}` does) before moving the tool there",
        )
    source_up = source is not None and source.reachable
    mode: Mode = req.mode or ("planned" if source_up and source.primary else "failover")  # type: ignore[union-attr]
    if mode == "planned" and not promoted_here:
        if not source_up:
            return refused(
                plan,
                f"a planned failover needs the database of {tool.name} at {from_site} to "
                f"answer ({source.error if source else 'not read'}); run it as a failover "
                "(--failover)",
            )
        if not target.replicating or target.last_error:
            return refused(
                plan,
                f"the replica at {req.to} does not replicate (receiving {target.io_running or '-'}"
                f", applying {target.sql_running or '-'}"
                + (f", last error: {target.last_error}" if target.last_error else "")
                + "); repair its replication first",
            )
        if target.seconds_behind is not None and target.seconds_behind > geo.catch_up_s:
            return refused(
                plan,
                f"the replica at {req.to} is {target.seconds_behind} s behind, more than it "
                f"may take to catch up (geo.catch_up_s = {geo.catch_up_s:g} s); wait and plan "
                "again",
            )
    problems = _minimum_problems(site, snap, req.to)
    if problems:
        return refused(plan, *problems)
    new_epoch = old_epoch if promoted_here else old_epoch + 1
    plan = plan.model_copy(
        update=dict(
            ok=True,
            mode=mode,
            new_epoch=new_epoch,
            resumed=promoted_here,
            remap=list(snap.remap),
        )
    )
    if mode == "failover":
        _loss_window(plan, tool, snap, req)
    plan.phases = _phases(site, tool, snap, plan, source_up=source_up, req=req)
    plan.notes = _notes(site, tool, plan, req)
    if mode == "failover":
        plan.human.append(
            f"when {from_site} comes back, its tool refuses writes (the masters name {req.to} "
            f"with epoch {new_epoch}); run `handover run geo-failback --service {tool.name} "
            f"--to {from_site}` to rebuild its database as {req.to}'s replica (its content is "
            "kept in a file first) and move the tool back"
        )
    return plan


def _already(plan: GeoPlan, tool: Tool, snap: GeoSnapshot, req: GeoRequest, epoch: int) -> GeoPlan:
    names_there = all(
        (a := current_answer(snap.names, n)) is not None and a.addresses == [plan.to_address]
        for n in tool.names
    )
    db = snap.databases.get(req.to)
    if names_there and db is not None and db.primary:
        return plan.model_copy(
            update=dict(
                ok=True,
                already_done=True,
                from_site=req.to,
                new_epoch=epoch,
                notes=[
                    f"{tool.name} is already active at {req.to} ({plan.to_address}) with epoch "
                    f"{epoch}: its names point there and its database is the primary; nothing "
                    "to do"
                ],
            )
        )
    return refused(
        plan,
        f"{tool.name}'s names already point at {req.to}, but its database there is not the "
        "primary ("
        + (
            "it does not answer"
            if db is None or not db.reachable
            else f"read-only {db.read_only}, replica of {db.source or 'nobody'}"
        )
        + "); read `handover status --service "
        + tool.name
        + "` and repair it by hand",
    )


def _minimum_problems(site: Site, snap: GeoSnapshot, to: str) -> list[str]:
    """The target site must have at least its `min_masters` masters answering (another site's
    silent masters are left behind and repaired later)."""
    assert site.geo is not None
    out = []
    for gs in site.geo.sites:
        masters = {f"{m.address}:{m.port}" for m in gs.masters}
        up = {a.master for a in snap.names if not a.error and a.master in masters}
        if gs.name == to and len(up) < gs.min_masters:
            out.append(
                f"only {len(up)} of {gs.name}'s {len(masters)} DNS master(s) answer, fewer "
                f"than its min_masters ({gs.min_masters}): clients there would not find "
                f"the tool at {to}; start a master of {gs.name} or lower its min_masters"
            )
    return out


def _loss_window(plan: GeoPlan, tool: Tool, snap: GeoSnapshot, req: GeoRequest) -> None:
    bound = req.max_lag_s if req.max_lag_s is not None else tool.max_lag_s
    lag = snap.last_lag.get(req.to)
    if lag is None or (lag.seconds is None and lag.transactions is None):
        plan.loss_window = (
            f"unknown: no replication reading of {req.to} is on record; every write "
            f"{plan.from_site} acknowledged that {req.to} had not received is lost"
        )
        plan.needs_loss_approval = True
        return
    plan.lag_s, plan.lag_transactions = lag.seconds, lag.transactions
    plan.lag_read_at = f"{lag.taken_at:%Y-%m-%d %H:%M:%S} UTC"
    plan.loss_window = (
        f"at the last reading ({plan.lag_read_at}) {req.to} was "
        + (f"{lag.seconds:g} s" if lag.seconds is not None else "an unknown time")
        + " and "
        + (
            f"{lag.transactions} transaction(s)"
            if lag.transactions is not None
            else "an unknown number of transactions"
        )
        + f" behind {lag.primary or plan.from_site}"
        + (f" (replication was broken: {lag.last_error})" if not lag.replicating else "")
        + f"; the writes {plan.from_site} acknowledged in that window, and after that reading, "
        "may be lost"
    )
    plan.needs_loss_approval = not lag.replicating or lag.seconds is None or lag.seconds > bound
    if plan.needs_loss_approval:
        plan.loss_window += f" (beyond the {bound:g} s accepted without asking)"


def _phases(
    site: Site, tool: Tool, snap: GeoSnapshot, plan: GeoPlan, *, source_up: bool, req: GeoRequest
) -> list[Phase]:
    assert site.geo is not None and plan.from_site and plan.to_site and plan.to_address
    assert plan.new_epoch is not None
    geo = site.geo
    src, to = plan.from_site, plan.to_site
    phases: list[Phase] = []
    if not plan.resumed and (plan.mode == "planned" or source_up):
        phases.append(
            Phase(
                name="fence the source",
                chains=[
                    Chain(
                        name=f"{tool.name}@{src}",
                        steps=[
                            DbReadOnly.build(
                                site,
                                "source-read-only",
                                src,
                                tool=tool.name,
                                post=f"the database at {src} is read-only: {tool.name} refuses "
                                "writes there",
                                if_fails="abort" if plan.mode == "planned" else "continue",
                                human=f"set the database of {tool.name} at {src} read-only by "
                                "hand when it answers (its tool is fenced by the epoch "
                                "meanwhile)",
                            )
                        ],
                    )
                ],
            )
        )
    if not plan.resumed:
        steps: list[AnyStep] = []
        if plan.mode == "planned":
            steps.append(
                WaitApplied.build(
                    site,
                    "catch-up",
                    to,
                    tool=tool.name,
                    source=src,
                    timeout_s=geo.catch_up_s,
                    post=f"{to} has applied every write of {src}",
                )
            )
        steps.append(
            PromoteReplica.build(
                site,
                "promote",
                to,
                tool=tool.name,
                epoch=plan.new_epoch,
                post=f"the database at {to} is the primary with epoch {plan.new_epoch}",
            )
        )
        phases.append(
            Phase(name="promote the target", chains=[Chain(name=f"{tool.name}@{to}", steps=steps)])
        )
    expect: dict[str, list[str]] = {}
    expect_epoch: dict[str, int | None] = {}
    for a in snap.names:
        if not a.error and a.name == tool.names[0]:
            expect[a.master], expect_epoch[a.master] = a.addresses, a.epoch
    names_steps: list[AnyStep] = [
        RepointNames.build(
            site,
            "repoint-names",
            to,
            tool=tool.name,
            names=list(tool.names),
            address=plan.to_address,
            epoch=plan.new_epoch,
            expect=expect,
            expect_epoch=expect_epoch,
            minimum={gs.name: gs.min_masters for gs in geo.sites},
            post=f"every master that answers points {', '.join(tool.names)} at {plan.to_address} "
            f"with epoch {plan.new_epoch}",
        )
    ]
    if any(gs.resolvers for gs in geo.sites):
        names_steps.append(
            AwaitResolvers.build(
                site,
                "await-resolvers",
                to,
                tool=tool.name,
                names=list(tool.names),
                address=plan.to_address,
                timeout_s=geo.ttl_s + geo.verify_margin_s,
                if_fails="continue",
                human=f"a resolver still answers the old address of {tool.names[0]} after the "
                "TTL: check its forwarders and flush it (`rndc flushname`)",
            )
        )
    phases.append(Phase(name="move the names", chains=[Chain(name="dns", steps=names_steps)]))
    if plan.mode == "planned" and not plan.resumed:
        phases.append(
            Phase(
                name="the old primary follows",
                chains=[
                    Chain(
                        name=f"{tool.name}@{src}",
                        steps=[
                            ReplicateFrom.build(
                                site,
                                "source-replicates",
                                src,
                                tool=tool.name,
                                source=to,
                                if_fails="continue",
                                human=f"make the database at {src} a replica of {to} by hand, "
                                f"or run `handover run geo-failback --service {tool.name} "
                                f"--to {src}` later (it rebuilds it)",
                            )
                        ],
                    )
                ],
            )
        )
    return phases


def _notes(site: Site, tool: Tool, plan: GeoPlan, req: GeoRequest) -> list[str]:
    assert site.geo is not None
    notes = [
        f"{plan.mode} geo failover of {tool.name} from {plan.from_site} ({plan.from_address}) to "
        f"{plan.to_site} ({plan.to_address}), epoch {plan.old_epoch} -> {plan.new_epoch}"
        + (f": {req.reason}" if req.reason else "")
    ]
    if plan.resumed:
        notes.append(
            f"resumed: {plan.to_site} was already promoted with epoch {plan.new_epoch} by an "
            "earlier run; only the names are left to move"
        )
    if plan.mode == "planned":
        notes.append(
            f"{tool.name} refuses writes from the moment {plan.from_site} is read-only until "
            f"{plan.to_site} is promoted and the names move; clients that still hold "
            f"{plan.from_address} (up to the TTL, {site.geo.ttl_s} s) are refused or redirected"
        )
    else:
        notes.append(f"loss window: {plan.loss_window}")
    if plan.masters_silent:
        notes.append(
            "DNS masters that did not answer (left behind if they still do not; the drift "
            "watch repairs them): " + ", ".join(plan.masters_silent)
        )
    if plan.remap:
        notes.append("remap readiness: " + "; ".join(plan.remap))
    return notes


def compensate_geo(site: Site, plan: GeoPlan, ledger: Ledger, failure: Failure) -> list[Remedy]:
    """What to undo when a geo failover's chain failed (pure; see the module docstring)."""
    label = f"{plan.tool} ({plan.from_site} -> {plan.to_site})"
    promoted = "promote" in ledger.done or plan.resumed
    if not promoted and "source-read-only" in ledger.done and plan.mode == "planned":
        assert plan.from_site is not None
        return [
            Remedy(
                agent=label,
                result="rolled-back",
                running_on=[plan.from_site],
                note=f"{plan.to_site} was not promoted; {plan.from_site} is writable again",
                steps=[
                    DbReadOnly.build(
                        site,
                        "source-writable",
                        plan.from_site,
                        tool=plan.tool,
                        on=False,
                        post=f"the database at {plan.from_site} is writable again",
                        human=f"set the database of {plan.tool} at {plan.from_site} writable by "
                        "hand (`SET GLOBAL read_only = OFF`)",
                    )
                ],
                failed_result="stranded",
                failed_note=f"{plan.from_site} stays read-only: {plan.tool} refuses writes",
            )
        ]
    if not promoted:
        return []
    if ledger.alias_moved:
        return []
    return [
        Remedy(
            agent=label,
            result="stranded",
            running_on=[plan.to_site] if plan.to_site else [],
            note=f"{plan.to_site} is the primary with epoch {plan.new_epoch}, but the names did "
            f"not move ({failure.message})",
            human=[
                f"{plan.tool}'s names still point at {plan.from_site}, whose tool refuses writes; "
                f"run `handover run geo-failover --service {plan.tool} --to {plan.to_site}` "
                "again: it resumes after the promotion"
            ],
        )
    ]
