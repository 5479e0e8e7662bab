"""The master-to-slave switch: its snapshot, request, plan and compensation.

The service's web front end runs as the master on one host, behind the DNS alias, and waits as a
slave on the others. A switch disables the master, enables the slave in its master role with a
new service epoch, and repoints the alias with one compare-and-set update that also writes that
epoch. Every write of a master carries its epoch and the database refuses an older one, so the
old master cannot write once the new epoch is claimed, even if it never heard of the switch.
The compare covers the address and the epoch the alias holds (as the primary answered them
over TSIG): an update captured on the wire and replayed after a later switch, even one back to
the same address, names an epoch that no longer holds and changes nothing.

The slave is enabled before the alias moves: a client that resolves the alias never meets a
front end that is not yet the master (the other order leaves fresh clients facing a slave for
the length of the enable).

* **planned** (the master answers as the master): the old master becomes a slave that redirects
  clients to the new one for the alias TTL plus a margin (clients keep the old address for up
  to the TTL), the slave is enabled, the alias moves. Nothing is fenced by hand: the master
  stopped writing when it was disabled, and the slave's epoch refuses it anyway.
* **failover** (the master does not answer): what can still be done on the master is done (its
  role set to slave when its host answers SSH, so a restart comes back as a slave), its DB
  sessions are killed, and the database's epoch is raised from the slave (the fence) before
  the slave is enabled and the alias moves.

Pre-checks (the plan is refused, nothing changes): the site declares a front end and DNS; every
authoritative server answers and they agree on the alias; the primary accepts the TSIG key; the
alias points at exactly one front-end host (the master); the slave answers, runs its server and
reads the database; for an automatic switch on a site that declares a cluster, the cluster is
not in maintenance mode (a switch started by a sensor then only notifies).

Compensation (`compensate_switch`): when a planned switch fails before the alias moved, the
master is enabled again (with an epoch newer than the slave's) and the slave disabled. When the
compare-and-set finds the alias changed by somebody else, nothing more is changed: the report
says where the alias points and who holds the epoch.

Nothing here does I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from config.site import Site
from flows.plans.model import AnyStep, Chain, Failure, Ledger, Phase, Plan, Remedy
from flows.plans.verbs import (
    DropSessions,
    FenceEpoch,
    FrontendDisable,
    FrontendEnable,
    MoveAlias,
)

PROCEDURE = "switch"
#: the program name of the front end's DB sessions (what a fence kills)
FRONTEND_PROGRAM = "fts-frontend"

Mode = Literal["planned", "failover"]


class FrontendState(BaseModel):
    """One front-end host as `fts-frontend status` reports it (or why it could not)."""

    host: str
    #: the host answered SSH and the command ran
    reachable: bool
    error: str = ""
    running: bool = False
    answers: bool = False
    role: str | None = None
    epoch: int | None = None
    db_epoch: int | None = None
    db_holder: str | None = None
    db_error: str | None = None

    @property
    def serving_master(self) -> bool:
        """It answers as the master with the database's current epoch."""
        return (
            self.reachable
            and self.answers
            and self.role == "master"
            and self.epoch is not None
            and self.epoch == self.db_epoch
        )


class AliasAnswer(BaseModel):
    """What one authoritative server answers for the alias (or why it did not)."""

    server: str
    addresses: list[str] = Field(default_factory=list)
    epoch: int | None = None
    serial: int | None = None
    error: str = ""


class SwitchSnapshot(BaseModel):
    """What the switch plans from: the alias on every server, the front ends, the key."""

    aliases: list[AliasAnswer]
    frontends: dict[str, FrontendState]
    #: the primary accepted the TSIG key (a no-op update whose prerequisite cannot hold);
    #: None when it could not be asked
    key_accepted: bool | None = None
    key_error: str = ""
    #: the cluster's maintenance mode (None: the site declares no cluster, or it could not be
    #: read: then `maintenance_error` says why)
    maintenance: bool | None = None
    maintenance_error: str = ""


class SwitchRequest(BaseModel):
    """What was asked."""

    #: the new master (default: the first other front-end host that is ready)
    to: str | None = None
    #: planned or failover; None: planned when the master answers as the master
    mode: Mode | None = None
    reason: str = ""
    #: started by a sensor: refused (only notified) while the cluster is in maintenance
    automatic: bool = False


class SwitchPlan(Plan):
    """The switch's plan: who, which addresses, which epoch."""

    procedure: str = PROCEDURE
    mode: Mode | None = None
    master: str | None = None
    to: str | None = None
    master_address: str | None = None
    to_address: str | None = None
    old_epoch: int | None = None
    new_epoch: int | None = None
    #: how long the old master redirects clients (planned)
    redirect_s: int = 0
    #: the alias already points at `to`, which serves with the current epoch
    already_done: bool = False
    #: the epoch a rolled-back master is enabled with (newer than the slave's)
    rollback_epoch: int | None = None
    #: what enables the master again, and what disables the slave (compensation of a planned
    #: switch)
    master_enable_command: str = ""
    slave_disable_command: str = ""


def _by_address(site: Site) -> dict[str, str]:
    assert site.frontend is not None
    return {site.host(h).address: h for h in site.frontend.hosts}


def plan_switch(site: Site, snap: SwitchSnapshot, req: SwitchRequest) -> SwitchPlan:
    """The switch's plan (pure; see the module docstring).

    Args:
        site: the site (with `frontend` and `dns`).
        snap: the alias on every authoritative server, the front ends, the key check.
        req: the new master, the mode, the reason.

    Returns:
        A plan; ``ok`` False with its problems when a pre-check failed (no steps).
    """
    plan = SwitchPlan(site=site.site, ok=False)
    if site.frontend is None or site.dns is None:
        plan.problems.append(
            f"site {site.site} declares no front end behind a DNS alias (`frontend:` and `dns:`)"
        )
        return plan
    dns, fe = site.dns, site.frontend
    # the alias: every authoritative server answers, and they agree
    silent = [a for a in snap.aliases if a.error]
    plan.problems += [f"DNS server {a.server} did not answer: {a.error}" for a in silent]
    answers = {tuple(a.addresses) for a in snap.aliases if not a.error}
    if len(answers) > 1:
        plan.problems.append(
            f"the authoritative servers disagree on {dns.alias}: "
            + "; ".join(f"{a.server} {', '.join(a.addresses) or 'nothing'}" for a in snap.aliases)
            + "; wait for the zone transfer (or repair the secondary) and run the switch again"
        )
    if snap.key_accepted is False:
        plan.problems.append(snap.key_error or f"the TSIG key {dns.tsig_key_name!r} was refused")
    elif snap.key_accepted is None and not silent:
        plan.problems.append(f"the TSIG key could not be checked: {snap.key_error}")
    if req.automatic and site.frontend.cluster_host is not None and snap.maintenance is not False:
        plan.problems.append(
            f"the cluster is in maintenance mode (asked on {site.frontend.cluster_host}): an "
            "automatic switch only notifies; switch by hand (`handover run switch`) if needed"
            if snap.maintenance
            else f"the cluster's maintenance mode could not be read on "
            f"{site.frontend.cluster_host} ({snap.maintenance_error}): an automatic switch only "
            "notifies"
        )
    if plan.problems:
        return plan
    current = list(next(iter(answers))) if answers else []
    by_addr = _by_address(site)
    masters = [by_addr[a] for a in current if a in by_addr]
    if len(current) != 1 or not masters:
        plan.problems.append(
            f"{dns.alias} points at {', '.join(current) or 'nothing'}, not at exactly one "
            f"front-end host ({', '.join(fe.hosts)}); repoint it by hand or fix the site file"
        )
        return plan
    master = masters[0]
    primary = snap.aliases[0]
    fronts = snap.frontends
    # the epoch: the newest the database or the alias has seen
    epochs = [primary.epoch or 0] + [f.db_epoch for f in fronts.values() if f.db_epoch is not None]
    old_epoch = max(epochs)
    # the new master
    to = req.to
    if to is not None:
        if to not in fe.hosts:
            plan.problems.append(
                f"{to} is not a front-end host of {site.site} (front ends: {', '.join(fe.hosts)})"
            )
            return plan
        if to == master:
            master_state = fronts.get(master)
            if master_state is not None and master_state.serving_master:
                return plan.model_copy(
                    update=dict(
                        ok=True,
                        already_done=True,
                        master=master,
                        to=to,
                        old_epoch=old_epoch,
                        new_epoch=old_epoch,
                        notes=[
                            f"{dns.alias} already points at {to}, which serves as the master "
                            f"with epoch {old_epoch}; nothing to do"
                        ],
                    )
                )
            plan.problems.append(
                f"{dns.alias} already points at {to}, but it does not serve as the master "
                f"({_describe(master_state)}); switch to another front end"
            )
            return plan
    else:
        others = [h for h in fe.hosts if h != master]
        ready = [h for h in others if _ready_slave(fronts.get(h)) is None]
        to = ready[0] if ready else others[0]
    why_not = _ready_slave(fronts.get(to))
    if why_not:
        plan.problems.append(f"the slave {to} is not ready: {why_not}")
        return plan
    m = fronts.get(master)
    mode: Mode = req.mode or ("planned" if m is not None and m.serving_master else "failover")
    if mode == "planned" and (m is None or not m.serving_master):
        plan.problems.append(
            f"a planned switch needs the master {master} to answer as the master "
            f"({_describe(m)}); run the switch as a failover (--failover)"
        )
        return plan
    new_epoch = old_epoch + 1
    master_addr, to_addr = site.host(master).address, site.host(to).address
    redirect_s = dns.ttl_s + fe.redirect_margin_s
    steps: list[AnyStep] = []
    if mode == "planned":
        steps.append(
            FrontendDisable(
                id="disable-master",
                host=master,
                address=to_addr,
                seconds=redirect_s,
                commands=[_cmd(site, "frontend_disable", redirect=to_addr, seconds=redirect_s)],
                pre="the master answers as the master",
                post=f"{master} is a slave and redirects clients to {to} for {redirect_s} s",
            )
        )
    else:
        if m is not None and m.reachable:
            steps.append(
                FrontendDisable(
                    id="disable-master",
                    host=master,
                    address="-",
                    commands=[_cmd(site, "frontend_disable", redirect="-", seconds=0)],
                    pre="the master's host answers SSH",
                    post=f"{master} is a slave (and comes back as one)",
                    if_fails="continue",
                    human=f"set the front end of {master} to slave by hand "
                    "(`fts-frontend disable`) before it is started again",
                )
            )
        steps += [
            DropSessions(
                id="drop-master-sessions",
                host=master,
                agents=[FRONTEND_PROGRAM],
                commands=[f"kill the DB sessions of {FRONTEND_PROGRAM} from {master}"],
                pre="the database answers",
                post=f"no DB session of {FRONTEND_PROGRAM} from {master} remains",
                if_fails="continue",
                human=f"kill the DB sessions of {FRONTEND_PROGRAM} from {master} by hand (the "
                "epoch fences its writes meanwhile)",
            ),
            FenceEpoch(
                id="fence",
                host=to,
                epoch=new_epoch,
                commands=[_cmd(site, "frontend_fence", epoch=new_epoch)],
                pre=f"the database's epoch is at most {new_epoch}",
                post=f"the database's epoch is {new_epoch}: {master} can no longer write",
            ),
        ]
    steps += [
        FrontendEnable(
            id="enable-slave",
            host=to,
            epoch=new_epoch,
            commands=[_cmd(site, "frontend_enable", epoch=new_epoch)],
            pre=f"the database's epoch is at most {new_epoch}",
            post=f"{to} answers as the master with epoch {new_epoch}; {master} can no longer write",
        ),
        MoveAlias(
            id="move-alias",
            host=to,
            expect=[master_addr],
            expect_epoch=primary.epoch,
            address=to_addr,
            epoch=new_epoch,
            commands=[
                f"nsupdate -y {dns.tsig_algorithm}:{dns.tsig_key_name}:… to "
                f"{dns.server}:{dns.port}: prereq yxrrset {dns.alias} A {master_addr}; "
                + (
                    f'prereq yxrrset {dns.alias} TXT "epoch={primary.epoch}"; '
                    if primary.epoch is not None
                    else f"prereq nxrrset {dns.alias} TXT; "
                )
                + f"update replace {dns.alias} {dns.ttl_s} A {to_addr}; "
                f'update replace {dns.alias} {dns.ttl_s} TXT "epoch={new_epoch}"'
            ],
            pre=f"{dns.alias} points at {master_addr} with epoch {primary.epoch} (compare-and-set)",
            post=f"every authoritative server answers {to_addr} with epoch {new_epoch}",
        ),
    ]
    notes = [
        f"{mode} switch of {dns.alias} from {master} ({master_addr}) to {to} ({to_addr}), "
        f"epoch {old_epoch} -> {new_epoch}" + (f": {req.reason}" if req.reason else ""),
    ]
    if mode == "planned":
        notes.append(
            f"clients that still hold {master_addr} (up to the TTL, {dns.ttl_s} s) are "
            f"redirected to {to} for {redirect_s} s"
        )
    else:
        notes.append(
            f"clients that still hold {master_addr} fail until their answer expires (the TTL, "
            f"{dns.ttl_s} s)"
        )
    return plan.model_copy(
        update=dict(
            ok=True,
            mode=mode,
            master=master,
            to=to,
            master_address=master_addr,
            to_address=to_addr,
            old_epoch=old_epoch,
            new_epoch=new_epoch,
            redirect_s=redirect_s if mode == "planned" else 0,
            rollback_epoch=new_epoch + 1,
            master_enable_command=_cmd(site, "frontend_enable", epoch=new_epoch + 1),
            slave_disable_command=_cmd(site, "frontend_disable", redirect="-", seconds=0),
            notes=notes,
            phases=[Phase(name="switch", chains=[Chain(name=f"{master} -> {to}", steps=steps)])],
        )
    )


def _cmd(site: Site, command: str, **values: object) -> str:
    return " ".join(site.commands.argv(command, **{k: str(v) for k, v in values.items()}))


def _describe(f: FrontendState | None) -> str:
    if f is None:
        return "not asked"
    if not f.reachable:
        return f"its host does not answer: {f.error}"
    if not f.running:
        return "its server does not run"
    if not f.answers:
        return "its server does not answer"
    return f"role {f.role}, epoch {f.epoch}, database epoch {f.db_epoch}"


def _ready_slave(f: FrontendState | None) -> str | None:
    """Why a front end cannot become the master, or None."""
    if f is None:
        return "its state was not read"
    if not f.reachable:
        return f"its host does not answer: {f.error}"
    if not f.running or not f.answers:
        return "its front-end server does not run or does not answer"
    if f.db_error or f.db_epoch is None:
        return f"it cannot read the database: {f.db_error or 'no epoch'}"
    return None


def compensate_switch(
    site: Site, plan: SwitchPlan, ledger: Ledger, failure: Failure
) -> list[Remedy]:
    """What to undo when the switch's chain failed before the alias moved (pure).

    * The alias was changed by somebody else (`AliasChanged`): nothing more is changed; a human
      decides which host is the master.
    * A planned switch: the master is enabled again with an epoch newer than the slave's (which
      fences the slave if it was enabled), then the slave is disabled.
    * A failover: the master is gone; the slave (enabled or not) is left as it is and a human
      repoints the alias.
    """
    assert plan.master is not None and plan.to is not None
    if ledger.alias_moved or (plan.mode == "planned" and "disable-master" not in ledger.done):
        return []
    master_label = f"front end {plan.master}"
    if failure.kind == "AliasChanged":
        return [
            Remedy(
                agent=master_label,
                result="stranded",
                running_on=[],
                note="the alias was changed by somebody else during the switch; nothing more "
                "was changed",
                human=[
                    f"the alias was moved by somebody else ({failure.message}); {plan.to} "
                    + (
                        f"serves as the master with epoch {plan.new_epoch}"
                        if "enable-slave" in ledger.done
                        else "was not enabled"
                    )
                    + f" and {plan.master} is a slave; decide which host is the master and run "
                    "`handover run switch --to HOST`"
                ],
            )
        ]
    if plan.mode != "planned":
        return [
            Remedy(
                agent=master_label,
                result="stranded",
                running_on=[plan.to] if "enable-slave" in ledger.done else [],
                note="failover: the alias did not move",
                human=[
                    f"the alias still points at {plan.master} ({plan.master_address}), which is "
                    f"fenced; repoint it to {plan.to} ({plan.to_address}) with epoch "
                    f"{plan.new_epoch}: run `handover run switch --to {plan.to} --failover` again "
                    "once the DNS primary answers"
                ],
            )
        ]
    return [
        Remedy(
            agent=master_label,
            result="rolled-back",
            running_on=[plan.master],
            note=f"the alias did not move; {plan.master} is the master again with epoch "
            f"{plan.rollback_epoch}",
            steps=[
                FrontendEnable(
                    id="re-enable-master",
                    host=plan.master,
                    epoch=plan.rollback_epoch,
                    commands=[plan.master_enable_command],
                    post=f"{plan.master} answers as the master with epoch {plan.rollback_epoch}",
                    human=f"enable the front end of {plan.master} by hand: "
                    f"`{plan.master_enable_command}`",
                ),
                FrontendDisable(
                    id="disable-slave",
                    host=plan.to,
                    address="-",
                    commands=[plan.slave_disable_command],
                    post=f"{plan.to} is a slave",
                    if_fails="continue",
                    human=f"disable the front end of {plan.to} by hand: "
                    f"`{plan.slave_disable_command}` (its writes are fenced meanwhile)",
                ),
            ],
            failed_result="stranded",
            failed_note=f"{plan.master} stays a slave: only {plan.to} serves, through redirects",
        )
    ]
