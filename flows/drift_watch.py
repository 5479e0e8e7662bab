"""Flow `drift-watch`: does every authoritative server still answer what the last switch wrote?

Scheduled (`deployments/prefect.yaml`, every 5 minutes). It reads the alias and its epoch on
the primary and each secondary and compares them with the record of the last completed switch
(`flows.switch_records`); without a record (no switch yet) the primary's answer is the
reference. A server that answers something else (a record changed by hand, a secondary that
stopped transferring the zone) or does not answer is drift: the run says it in Slack (one
message in the site's channel), emits the Prefect event ``handover.dns.drift`` (resource
``handover.alias.<site>``, the answers as payload) for automations, and ends Failed so it shows
in the UI. It changes nothing.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.events import emit_event
from prefect.states import Completed, Failed
from pydantic import BaseModel, Field

from flows.plans.switch import AliasAnswer
from flows.run_site import load_run_site
from flows.switch_records import LastSwitch, last_switch
from tasks.adapters.slack import SlackNotifier, mrkdwn
from tasks.alias import read_aliases

PROCEDURE = "drift-watch"
EVENT = "handover.dns.drift"


class DriftResult(BaseModel):
    """What the drift watch found."""

    site: str
    alias: str
    status: Literal["ok", "drift", "no-dns"]
    summary: str
    #: what the servers should answer, and where that comes from
    expected_addresses: list[str] = Field(default_factory=list)
    expected_epoch: int | None = None
    reference: str = ""
    last_switch: LastSwitch | None = None
    servers: list[AliasAnswer] = Field(default_factory=list)
    drifted: list[str] = Field(default_factory=list)


def find_drift(answers: list[AliasAnswer], expected: list[str], epoch: int | None) -> list[str]:
    """The servers whose answer differs from `expected` and `epoch`, each with what it says
    (pure)."""
    return [
        f"{a.server}: "
        + (
            f"no answer ({a.error})"
            if a.error
            else f"{', '.join(a.addresses) or 'nothing'} with epoch {a.epoch}"
        )
        for a in answers
        if a.error or a.addresses != expected or a.epoch != epoch
    ]


@flow(name=PROCEDURE, persist_result=False)
def drift_watch(site_file: str) -> State[Any]:
    """Compare every authoritative server's answer with the last switch (module docstring).

    Args:
        site_file: the site file.

    Returns:
        Completed (no drift, or no DNS to watch) or Failed (drift), with the `DriftResult`.
    """
    site = load_run_site(site_file)
    if site.dns is None:
        result = DriftResult(
            site=site.site, alias="", status="no-dns", summary=f"site {site.site} has no DNS alias"
        )
        return Completed(message=result.summary, data=result)
    answers = read_aliases(site)
    record = last_switch(site.site)
    epoch: int | None
    if record is not None:
        expected, epoch = [record.address], record.epoch
        reference = f"the last switch ({record.host}, epoch {record.epoch}, {record.at:%F %T} UTC)"
    else:
        primary = answers[0]
        expected, epoch = primary.addresses, primary.epoch
        reference = "the primary's answer (no switch on record)"
    drifted = find_drift(answers, expected, epoch)
    alias = site.dns.alias
    result = DriftResult(
        site=site.site,
        alias=alias,
        status="drift" if drifted else "ok",
        summary=(
            f"{alias}: {len(drifted)} of {len(answers)} authoritative server(s) differ from "
            f"{reference}, which wrote {', '.join(expected) or 'nothing'} with epoch {epoch}: "
            + "; ".join(drifted)
            if drifted
            else f"{alias}: all {len(answers)} authoritative servers answer "
            f"{', '.join(expected)} with epoch {epoch}, as {reference}"
        ),
        expected_addresses=expected,
        expected_epoch=epoch,
        reference=reference,
        last_switch=record,
        servers=answers,
        drifted=drifted,
    )
    if not drifted:
        return Completed(message=result.summary, data=result)
    emit_event(
        event=EVENT,
        resource={
            "prefect.resource.id": f"handover.alias.{site.site}",
            "prefect.resource.name": alias,
            "handover.site": site.site,
            "handover.alias": alias,
        },
        payload=result.model_dump(mode="json"),
    )
    # the summary quotes what the DNS servers answered: shown as text
    SlackNotifier.for_site(site).post(
        mrkdwn(
            ":warning: DNS drift: {}. Nothing was changed; check who changed the record, then "
            "run `handover run switch` to set it again if needed.",
            result.summary,
        ),
        in_thread=False,
    )
    return Failed(message=result.summary, data=result)
