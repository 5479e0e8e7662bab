"""Every verb a plan's step may name, registered in one place.

Each verb is a subclass of `flows.plans.step.Step` in one module of this package, by what it
acts on (channels, drain, agents, standby, db, frontend, alias, upgrade): its parameters, its
conditions, the commands a plan shows for it and its effect on the ledger. `AnyStep` is the
union of them all, told apart by ``verb``: a plan read from a file gets each step as its own
kind, and a step that lacks what its verb needs (or names what it does not take) is refused.
What each verb does on a site is in `tasks.verbs`, registered there by the same classes.

Adding a verb: its class in the module of its kind (or a new module), one line in `AnyStep`
below, and its act in `tasks.verbs`.
"""

from __future__ import annotations

from typing import Annotated, get_args

from pydantic import Field

from config.site import Site
from flows.plans.step import Ledger, Step
from flows.plans.verbs.agents import ClearDisabled, Start, Stop, WriteDisabled
from flows.plans.verbs.alias import MoveAlias
from flows.plans.verbs.channels import SetActive, SetInactive
from flows.plans.verbs.db import DropSessions
from flows.plans.verbs.drain import AwaitCutover, WaitDrained
from flows.plans.verbs.frontend import FenceEpoch, FrontendDisable, FrontendEnable
from flows.plans.verbs.geo import (
    AwaitResolvers,
    DbReadOnly,
    PromoteReplica,
    RebuildReplica,
    ReplicateFrom,
    RepointNames,
    WaitApplied,
)
from flows.plans.verbs.standby import AwaitServing, HandOver, StartStandby
from flows.plans.verbs.upgrade import CheckAgents, ConfigureNode, InstallVersion, RestartAgents

AnyStep = Annotated[
    SetInactive
    | SetActive
    | WaitDrained
    | AwaitCutover
    | WriteDisabled
    | ClearDisabled
    | Stop
    | Start
    | StartStandby
    | AwaitServing
    | HandOver
    | DropSessions
    | FrontendDisable
    | FrontendEnable
    | FenceEpoch
    | MoveAlias
    | CheckAgents
    | InstallVersion
    | ConfigureNode
    | RestartAgents
    | DbReadOnly
    | WaitApplied
    | PromoteReplica
    | RepointNames
    | ReplicateFrom
    | RebuildReplica
    | AwaitResolvers,
    Field(discriminator="verb"),
]

#: every verb's step class, by the verb's name (from the union: one list to keep)
VERBS: dict[str, type[Step]] = {
    cls.model_fields["verb"].default: cls for cls in get_args(get_args(AnyStep)[0])
}

_classes: list[type[Step]] = [Step, *VERBS.values()]
for _cls in _classes:
    _cls.model_rebuild(_types_namespace={"AnyStep": AnyStep, "Ledger": Ledger})


def step(
    site: Site,
    sid: str,
    verb: str,
    host: str,
    agents: list[str] | None = None,
    channels: list[str] | None = None,
    **fields: object,
) -> AnyStep:
    """A step of the named verb, with its commands on this site and its conditions.

    Raises:
        KeyError: no verb has that name.
        pydantic.ValidationError: a field the verb does not take, or one it needs is missing.
    """
    made: AnyStep = VERBS[verb].build(site, sid, host, agents, channels, **fields)  # type: ignore[assignment]
    return made


__all__ = [
    "VERBS",
    "AnyStep",
    "AwaitCutover",
    "AwaitResolvers",
    "AwaitServing",
    "CheckAgents",
    "ClearDisabled",
    "ConfigureNode",
    "DbReadOnly",
    "DropSessions",
    "FenceEpoch",
    "FrontendDisable",
    "FrontendEnable",
    "HandOver",
    "InstallVersion",
    "MoveAlias",
    "PromoteReplica",
    "RebuildReplica",
    "ReplicateFrom",
    "RepointNames",
    "RestartAgents",
    "SetActive",
    "SetInactive",
    "Start",
    "StartStandby",
    "Step",
    "Stop",
    "WaitApplied",
    "WaitDrained",
    "WriteDisabled",
    "step",
]
