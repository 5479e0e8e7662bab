"""The runs an incident starts, created by the gateway itself, exactly as the automations would.

An alert that opens an incident used to reach its procedure through Prefect's automations: the
gateway sent the event, a deployment trigger matched it, and the run-deployment action created the
run. Each of those hops costs time (on SQLite, the action loses a write race with its trigger and
retries after 2 s). The gateway now creates the runs itself, from the very triggers of
`deployments/prefect.yaml` as `handover serve` binds them to the site (`infra.serve.site_triggers`):
an event is matched the way Prefect matches it (the event name against `expect`, the resource
against `match`, with Prefect's own `ResourceSpecification`), and each matching trigger's
`parameters` are rendered from the event with Jinja, as Prefect renders them. So the decision
has one source, the deployments file.

Each run is created from the site's own deployment (`infra.serve.deployment_name`: one per site
and service) with an idempotency key derived from the incident's event id (itself derived from
the alert's identity, site included) and that deployment's name: the same alert through a
retried request, or through two gateways at once, creates one run per deployment, and Prefect
answers the existing run to the second creation; another site's alert is another key. The
gateway's own events are then ``handover.gateway.<kind>`` (the feed keeps them; no trigger
expects them); ``handover.alert.<kind>`` events that reach Prefect another way still
start their procedures through the automations, which stay as the backstop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from config.site import Site

log = logging.getLogger("handover.gateway.starts")


@dataclass(frozen=True)
class Start:
    """One run to create: the deployments file's entry (the procedure; the site's deployment
    of it is `infra.serve.deployment_name`) and the run's parameters."""

    deployment: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class _Trigger:
    deployment: str
    expect: frozenset[str]
    match: Any  # prefect.events.schemas.events.ResourceSpecification
    parameters: dict[str, Any]


def triggers(site: Site, path: Path | None = None) -> list[_Trigger]:
    """Every deployment trigger of the site's entries of the deployments file, bound to `site`
    as `handover serve` binds them (`infra.serve.site_triggers`)."""
    from infra.serve import DEPLOYMENTS_FILE, entry_applies, read_deployments, site_triggers

    out = []
    for d in read_deployments(path or DEPLOYMENTS_FILE):
        if not entry_applies(d, site):
            continue  # not one of the site's deployments (`handover serve` leaves it out)
        for t in site_triggers(d["name"], d.get("triggers") or [], site):
            out.append(
                _Trigger(
                    deployment=d["name"],
                    expect=frozenset(t.expect),
                    match=t.match,
                    parameters=dict(t.parameters or {}),
                )
            )
    return out


@cache
def _jinja() -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(autoescape=False)


def _render(value: Any, event: dict[str, Any]) -> Any:
    if isinstance(value, str) and "{{" in value:
        return _jinja().from_string(value).render(event=event)
    if isinstance(value, dict):
        return {k: _render(v, event) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, event) for v in value]
    return value


def _expected(name: str, expect: frozenset[str]) -> bool:
    return any(name == e or (e.endswith("*") and name.startswith(e[:-1])) for e in expect)


def starts_for(event: dict[str, Any], rules: list[_Trigger]) -> list[Start]:
    """The runs the automations would start for `event` (a Prefect event as the gateway sends
    it: ``event``, ``id``, ``resource``, ``payload``), one per matching trigger."""
    from prefect.events.schemas.events import Resource

    resource = Resource(root=event["resource"])
    return [
        Start(deployment=t.deployment, parameters=_render(t.parameters, event))
        for t in rules
        if _expected(event["event"], t.expect) and t.match.matches(resource)
    ]


def idempotency_key(event_id: str, deployment: str) -> str:
    """The key of the run a deployment gets for an incident (the same for every gateway):
    `deployment` is the site's deployment's name (`infra.serve.deployment_name`), so the key
    names the site and the service."""
    return f"handover incident {event_id} {deployment}"


class RunStarter:
    """Creates an incident's runs of one site's deployments through the Prefect API
    (deployment ids looked up once)."""

    def __init__(self, site: Site, path: Path | None = None) -> None:
        self.site = site
        self.rules = triggers(site, path)
        self._ids: dict[str, Any] = {}

    def name_of(self, entry: str) -> str:
        """The name of this site's deployment of an entry (`infra.serve.deployment_name`)."""
        from infra.serve import deployment_name

        return deployment_name(entry, self.site)

    async def deployment_id(self, client: Any, entry: str) -> Any:
        """The id of this site's deployment of `entry` (unique by name: one per site and
        service)."""
        if entry not in self._ids:
            from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

            name = self.name_of(entry)
            found = await client.read_deployments(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))
            )
            if not found:
                raise LookupError(
                    f"no deployment {name!r}: is `handover serve --site {self.site.site}` "
                    "running (or was `handover deploy` run for the site)?"
                )
            self._ids[entry] = found[0].id
        return self._ids[entry]

    async def warm(self, client: Any) -> None:
        """Look every triggered deployment of the site up now (at the gateway's start), so that
        the first alert only creates its runs; one not served yet is looked up at its first
        alert."""
        for name in sorted({t.deployment for t in self.rules}):
            try:
                await self.deployment_id(client, name)
            except Exception as exc:  # noqa: BLE001 - looked up again when an alert needs it
                log.info("deployment %s not looked up yet: %s", name, exc)

    def deployments_for(self, event: dict[str, Any]) -> list[str]:
        """The entries (procedures) whose triggers the event fires, in trigger order."""
        return [s.deployment for s in starts_for(event, self.rules)]

    async def start(
        self, client: Any, event: dict[str, Any], only: set[str] | None = None
    ) -> list[tuple[str, str]]:
        """Create the event's runs of this site's deployments; (entry, run id) for each, in
        trigger order (`only`: these entries only).

        Raises:
            Exception: the Prefect API did not create a run (the caller answers 503; a retry
                creates no second run: the idempotency key).
        """
        created = []
        for s in starts_for(event, self.rules):
            if only is not None and s.deployment not in only:
                continue
            dep_id = await self.deployment_id(client, s.deployment)
            key = idempotency_key(event["id"], self.name_of(s.deployment))
            run = await _create_quickly(client, dep_id, s.parameters, key)
            created.append((s.deployment, str(run.id)))
        return created


#: waits between tries of a run's creation that the server answered "busy" (503, 429)
BUSY_RETRY_S = (0.1, 0.2, 0.4, 0.8, 1.6)
#: how a busy retry waits (a test records the waits instead: patching asyncio.sleep itself
#: would record every other coroutine's sleep in the process too)
_sleep = asyncio.sleep


async def _create_quickly(client: Any, dep_id: Any, parameters: Any, key: str) -> Any:
    """Create a run, retrying a busy server (a SQLite database locked by another write answers
    503) after 0.1, 0.2, 0.4... s instead of Prefect's client's 2, 4, 8 s: the alert's sender
    is waiting. Safe to repeat: the idempotency key gives the same run."""
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    for wait_s in (*BUSY_RETRY_S, None):
        try:
            with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}):
                return await client.create_flow_run_from_deployment(
                    dep_id, parameters=parameters, idempotency_key=key
                )
        except PrefectHTTPStatusError as exc:
            if wait_s is None or exc.response.status_code not in (429, 503):
                raise
        await _sleep(wait_s)
    raise AssertionError("unreachable")
