"""A procedure whose process died is finished elsewhere: two Prefect automations, nothing of ours
in between.

1. **Dead run -> Crashed.** Every run of handover's deployments sends Prefect's flow-run heartbeat
   every `HEARTBEAT_S` (its minimum; `handover worker` and `handover serve` set it). A run that
   has sent one, or has been taken by a worker (Pending, Submitting) or set Running, and then,
   within `DEAD_AFTER_S`, neither a heartbeat nor a final state is dead (its worker or machine
   was killed): the automation sets it Crashed. The states count because a run's first heartbeat
   leaves its process a moment after the run starts, through a queue: a worker killed while it
   started the run, or a process killed in that moment, sent none, and its run would otherwise
   stay Pending or Running for ever (and its incident open, attaching every later alert). (For a
   run that ended with a final state the automation cannot know, the change is refused by the
   server: a final state is never left for Crashed.)
2. **Crashed -> the same procedure again.** A crashed run of a handover deployment, for that
   reason or because its process exited without a final state, makes Prefect run the same
   deployment with the same parameters (the crashed run's, rendered by the automation), which
   any worker of the pool (or `handover serve`) picks up. Plans come from live state and verbs
   are idempotent, so the new run converges from where the dead one left the site, and the
   service lock the dead run held is taken over at once (`flows/service_lock.py`: its holder's
   run is Crashed).

A new run, not the crashed one scheduled again: should the "dead" run's process be alive after
all (a machine frozen past `DEAD_AFTER_S`, then thawed), its run stays Crashed, its executor sees
that before its next step and stops without touching the site (`flows/attempt.py`), and nothing
it reports can change the new run's state. A run this automation started refuses to start when
the same procedure with the same parameters crashed `MAX_CRASHES` times in the last hour, so a
procedure that kills its own process is not started again for ever.

Both automations match runs tagged `handover` (every deployment of deployments/prefect.yaml, of
every site), and name no deployment: the second infers it from the crashed run, so a crashed run
of site B's deployment (`infra.serve.deployment_name`) starts B's again, with B's site file.
`handover deploy` and `handover serve` create them, once for all sites (idempotent: replaced by
name).
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

from flows.attempt import CRASH_WINDOW_S, MAX_CRASHES, RESUME_NAME

#: Prefect's flow-run heartbeat period; 30 s is the least it allows
HEARTBEAT_S = 30
#: a run silent this long after a heartbeat is dead (a heartbeat period and a margin for load)
DEAD_AFTER_S = 50
TAG = "handover"
DEAD_NAME = "handover: a procedure's run stopped sending heartbeats -> crashed"
_FINAL = ("Completed", "Failed", "Cancelled", "Crashed", "Cancelling")


def automations() -> list[Any]:
    """The two automations (Prefect `AutomationCore`s)."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState, RunDeployment
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    runs = {"prefect.resource.id": "prefect.flow-run.*"}
    tagged = {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{TAG}"}
    dead = AutomationCore(
        name=DEAD_NAME,
        description=(
            f"A run tagged {TAG} that sent a heartbeat, or was taken by a worker or set Running, "
            f"and then nothing for {DEAD_AFTER_S} s (its worker or machine died) is marked "
            "Crashed."
        ),
        trigger=EventTrigger(
            after={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Pending",
                "prefect.flow-run.Submitting",
                "prefect.flow-run.Running",
            },
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in _FINAL)},
            match=runs,
            match_related=tagged,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=DEAD_AFTER_S),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {DEAD_AFTER_S} s: its worker or machine died",
            )
        ],
    )
    resume = AutomationCore(
        name=RESUME_NAME,
        description=(
            f"A crashed run tagged {TAG} starts its deployment again with the same parameters, "
            f"for any worker (refused after {MAX_CRASHES} crashes in {CRASH_WINDOW_S} s)."
        ),
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match=runs,
            match_related=tagged,
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            RunDeployment(
                source="inferred",
                # the crashed run's parameters as they were (a template at the root renders the
                # whole mapping, with its types)
                parameters={
                    "__prefect_kind": "json",
                    "value": {
                        "__prefect_kind": "jinja",
                        "template": "{{ flow_run.parameters | tojson }}",
                    },
                },
            )
        ],
    )
    return [dead, resume]


def ensure_automations() -> list[str]:
    """Create the two automations on the configured Prefect API, or replace one whose definition
    changed; several callers at once (two `handover deploy`s) leave one of each.

    Returns:
        One line per automation: its name, id and what was done.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    def same(a: Any, b: Any) -> bool:
        keys = {"trigger", "actions", "description"}
        return bool(
            a.model_dump(mode="json", include=keys) == b.model_dump(mode="json", include=keys)
        )

    lines = []
    with get_client(sync_client=True) as client:
        for wanted in automations():
            found = client.read_automations_by_name(wanted.name)
            kept = [a for a in found if same(a, wanted)]
            for old in found:
                if old not in kept:
                    with contextlib.suppress(ObjectNotFound, PrefectHTTPStatusError):
                        client.delete_automation(old.id)
            done = "kept"
            if not kept:
                client.create_automation(wanted)
                done = "created"
                kept = [a for a in client.read_automations_by_name(wanted.name) if same(a, wanted)]
            # two callers may each have created one: all keep the same (least id), drop the rest
            kept.sort(key=lambda a: str(a.id))
            for extra in kept[1:]:
                with contextlib.suppress(ObjectNotFound, PrefectHTTPStatusError):
                    client.delete_automation(extra.id)
            lines.append(f"automation {wanted.name} {kept[0].id if kept else '?'} ({done})")
    return lines
