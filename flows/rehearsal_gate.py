"""Whether a run may go ahead as its policy says of rehearsals (``rehearse: required``): the
site's last rehearsal of the procedure, read from where `handover rehearse` keeps it, counts
only with its seal (`flows.seals`), for the same plan, passed and recent enough."""

from __future__ import annotations

import datetime as dt

from config.site import ProcedurePolicy, Site
from flows.plans.model import Plan
from flows.plans.rehearsal import rehearsal_refusal
from flows.seals import rehearsal_seal_holds, site_rehearsal_seal_key
from tasks.rehearsals import read_rehearsal


def rehearsal_gate(
    site: Site, procedure: str, policy: ProcedurePolicy, plan: Plan, command: str
) -> tuple[str | None, str]:
    """What a run's policy says of rehearsals: (why it may not go ahead, None when it may; what
    its approval says of the rehearsal, "" when the policy does not ask for one).

    Args:
        site: the site.
        procedure: the procedure's name.
        policy: the procedure's policy (`rehearse`, `rehearse_within_s`).
        plan: the run's plan.
        command: the command that rehearses this run, for the refusal.
    """
    if policy.rehearse != "required":
        return None, ""
    record = read_rehearsal(site.site, procedure)
    sealed = record is not None and rehearsal_seal_holds(
        site_rehearsal_seal_key(site), *record.sealed_fields, record.seal
    )
    why = rehearsal_refusal(
        record,
        plan,
        now=dt.datetime.now(dt.UTC),
        within_s=policy.rehearse_within_s,
        command=command,
        sealed=sealed,
    )
    if why is not None or record is None:
        return why, ""
    return None, record.sentence()
