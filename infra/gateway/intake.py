"""Alerts to Prefect: start an incident's runs, send its event, find the run it started, and note
on that run (its log and its Slack thread) every alert attached to it afterwards.

With a `RunStarter` (the default of `handover gateway`) the gateway creates the incident's runs
itself, as the deployments' triggers would (`infra.gateway.starts`), and its events are
``handover.gateway.<kind>``; without one, they are ``handover.alert.<kind>`` and Prefect's
automations start the runs. The event goes to the Prefect API (``POST /api/events``, what
`emit_event` sends over its websocket) and is acknowledged: when Prefect cannot create the runs
or take the event, the gateway answers 503, the incident is dropped and the sender retries (the
hooks spool), so an alert is never acknowledged and lost (and a retry creates no second run:
the runs' idempotency keys).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from config.site import Site
from flows.notify import Mrkdwn, mrkdwn, thread_variable
from flows.seals import alert_seal
from infra.gateway.alerts import (
    ATTACHED_EVENT,
    Alert,
    event_name,
    event_resource,
    gateway_event_name,
)
from infra.gateway.incidents import Incident, IncidentBook
from infra.gateway.shared_incidents import IncidentStoreError
from infra.gateway.starts import RunStarter
from infra.serve import deployment_name, entry_applies, read_deployments
from tasks.probe import sshd_greets

T = TypeVar("T")
#: audit events (attached, noted) sent to Prefect in one request at most
EVENT_BATCH = 200
#: audit events kept while Prefect does not take them
MAX_QUEUED_EVENTS = 10_000

log = logging.getLogger("handover.gateway.alerts")
SLACK_NOTE_EVERY_S = 10.0
#: an incident whose run Prefect says it does not know (deleted), or whose run id cannot be a
#: run's, for this long is closed (with an audit line): otherwise it would stay open for ever
#: and every later alert for its host would only be attached, starting nothing
RUN_UNREADABLE_CLOSE_S = 60.0


class PrefectUnavailable(RuntimeError):
    """The Prefect API (or the shared incident book) did not take the alert; nothing was
    recorded as sent, and the answer is 503 so that the sender retries."""


class AlertIntake:
    """Turns admitted alerts into Prefect events and keeps their incidents' runs informed.

    Args:
        site: the gateway's site.
        incidents: the incident book.
        audit: writes one audit entry (the gateway's JSON audit log).
        slack_post: posts ``(channel, thread_ts, text)`` to Slack (`Mrkdwn`: the alerts' words
            in it are escaped), or None without Slack.
        starter: creates a new incident's runs (None: Prefect's automations start them from
            the event).
        alert_key: seals the event of an alert that opens an incident (`flows.seals`): the runs
            it starts may take their automatic paths.
    """

    def __init__(
        self,
        site: Site,
        incidents: IncidentBook,
        audit: Callable[..., None],
        slack_post: Callable[[str, str, Mrkdwn], None] | None = None,
        starter: RunStarter | None = None,
        *,
        alert_key: bytes | None = None,
    ) -> None:
        self.site = site
        self.alert_key = alert_key
        self.starter = starter
        self.incidents = incidents
        self.audit = audit
        self.slack_post = slack_post
        self._slack_backlog: dict[str, list[str]] = {}
        self._events: list[dict[str, Any]] = []
        #: audit events dropped because Prefect did not take them for too long
        self.events_dropped = 0
        self._slack_noted_at: dict[str, float] = {}
        #: since when (the book's clock) each incident's run could not be read, by event id
        self._unreadable_since: dict[str, float] = {}
        #: the procedures the site has a deployment of
        self._deployments = {d["name"] for d in read_deployments() if entry_applies(d, site)}

    @property
    def events_queued(self) -> int:
        """Audit events not yet taken by Prefect."""
        return len(self._events)

    def _queue_event(self, ev: dict[str, Any]) -> None:
        if len(self._events) >= MAX_QUEUED_EVENTS:
            self._events.pop(0)
            self.events_dropped += 1
        self._events.append(ev)

    async def send_events(self, client: Any) -> int:
        """Send the queued audit events in one request; on failure they stay queued (up to
        `MAX_QUEUED_EVENTS`, the oldest dropped first). Returns how many were sent."""
        if not self._events:
            return 0
        batch, self._events = self._events[:EVENT_BATCH], self._events[EVENT_BATCH:]
        try:
            resp = await client.request("POST", "/events", json=batch)
            resp.raise_for_status()
        except Exception as exc:  # noqa: BLE001 - kept for the next try
            self._events[:0] = batch
            log.warning(
                "could not send %d alert events (kept for the next try): %s", len(batch), exc
            )
            return 0
        return len(batch)

    async def drain_events(self, client: Any) -> None:
        """Send every queued audit event (batch after batch) until none is left or a send
        fails."""
        while await self.send_events(client) == EVENT_BATCH:
            pass

    async def send_events_forever(self, client: Any, every_s: float = 0.1) -> None:
        """The gateway's background sender of audit events."""
        while True:
            await self.drain_events(client)
            await asyncio.sleep(every_s)

    async def _book(self, fn: Callable[..., T], *args: Any) -> T:
        """Call the incident book: off the event loop when it waits on a server."""
        if self.incidents.remote:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    def procedure_for(self, alert: Alert) -> str | None:
        """The procedure an alert's kind starts (None: it starts nothing): the site's
        `alerts.procedures`, when the procedure is one of the site's deployments (the agents'
        procedures are not a site of web tools', the geo control switch not a site's without
        `geo:`)."""
        assert self.site.alerts is not None
        procedure = self.site.alerts.procedures.get(alert.kind)
        return procedure if procedure in self._deployments else None

    async def accept(self, alert: Alert, client: Any) -> dict[str, Any]:
        """Admit one valid alert: send its event when it opens an incident, else attach it.

        Raises:
            PrefectUnavailable: the event could not be sent (nothing is recorded as sent).
        """
        procedure = self.procedure_for(alert)
        if procedure is not None and self._age_over_bound(alert) is not None:
            # only an old alert may need a probe of its host: a thread then, not the event loop
            stale = await asyncio.to_thread(self.stale_reason, alert)
            if stale:
                self.audit(
                    source=alert.source,
                    result="stale",
                    kind=alert.kind,
                    **_about(alert),
                    reason=stale,
                )
                return {"ok": True, "result": "stale", **_about(alert), "reason": stale}
        try:
            verdict, inc = await self._book(self.incidents.admit, alert, procedure)
        except IncidentStoreError as exc:  # nothing recorded: the sender retries (503)
            raise PrefectUnavailable(f"the incident book did not answer: {exc}") from exc
        answer: dict[str, Any] = {"ok": True, "result": verdict, **_about(alert)}
        if inc is not None:
            answer["incident"] = str(inc.event_id)
            answer["run_id"] = inc.run_id
        fe = self.site.frontend
        ev = alert_event(
            alert,
            inc if verdict == "new" else None,
            attached=verdict == "attached",
            frontend_hosts=frozenset(fe.hosts if fe else ()),
            alert_key=self.alert_key,
        )
        if self.starter is not None and verdict != "attached":
            # the gateway decides what starts: its events are ones no trigger expects
            trigger_event = dict(ev)
            ev["event"] = gateway_event_name(alert)
        if verdict != "new":
            # attached, noted, ignored: already in the book; their events are the audit trail
            # and start nothing, so they go to Prefect in batches (`send_events`), not while the
            # sender waits: a storm's answers do not queue behind Prefect's writes
            self._queue_event(ev)
            answer["event_id"] = ev["id"]
        else:
            assert inc is not None
            # the other procedures the alert starts (a front-end host's host_down also starts
            # the switch) are incidents of that host too: one already open for that procedure
            # (its frontend_down came first) is not started twice, as Prefect's per-host trigger
            # window would not start it twice
            others: dict[str, Incident] = {}
            try:
                if self.starter is not None:
                    allowed = {inc.procedure}
                    for dep in self.starter.deployments_for(trigger_event):
                        if dep != inc.procedure:
                            v, other = await self._book(self.incidents.admit, alert, dep)
                            if v == "new" and other is not None:
                                allowed.add(dep)
                                others[dep] = other
                    created = await self.starter.start(client, trigger_event, only=allowed)
                    answer["runs"] = {dep: run for dep, run in created}
                    run_id = answer["runs"].get(inc.procedure, inc.run_id)
                    await self._book(self.incidents.set_run, inc, run_id)
                    for dep, other in others.items():
                        await self._book(self.incidents.set_run, other, answer["runs"].get(dep))
                    answer["run_id"] = inc.run_id
                resp = await client.request("POST", "/events", json=[ev])
                resp.raise_for_status()
                answer["event_id"] = ev["id"]
            except Exception as exc:
                await self._book(self.incidents.forget, inc)
                for other in others.values():
                    await self._book(self.incidents.forget, other)
                raise PrefectUnavailable(
                    f"Prefect did not start the runs or take the event: {exc}"
                ) from exc
        if verdict == "new":
            answer["starts"] = procedure
        self.audit(
            source=alert.source,
            result=verdict,
            kind=alert.kind,
            **_about(alert),
            incident=answer.get("incident"),
            event=answer.get("event_id"),
        )
        return answer

    def _age_over_bound(self, alert: Alert) -> float | None:
        """The alert's age when it is over `alerts.max_age_s` and not Alertmanager's (whose
        notifications are current by nature: it re-sends what still fires, whatever their
        ``startsAt``); None otherwise. Only such an alert may be stale (`stale_reason`): a fresh
        one, the storm's every one, is admitted without a thread's round trip."""
        assert self.site.alerts is not None
        if alert.source == "alertmanager":
            return None
        age = (dt.datetime.now(dt.UTC) - alert.time).total_seconds()
        return age if age > self.site.alerts.max_age_s else None

    def stale_reason(self, alert: Alert) -> str | None:
        """Why an old alert is not acted on, or None (fresh, or its failure confirmed now).

        An alert older than `alerts.max_age_s` (a spooled one delivered after an outage, a
        monitor's late repeat) starts nothing unless a fresh probe confirms it: for
        ``host_down``, the host's sshd does not greet; other kinds cannot be confirmed from
        here, so an old one is only recorded. Alertmanager's notifications are never old
        (`_age_over_bound`).
        """
        assert self.site.alerts is not None
        age = self._age_over_bound(alert)
        if age is None:
            return None
        limit = self.site.alerts.max_age_s
        if alert.kind == "host_down":
            h = self.site.host(alert.host)
            if not sshd_greets(h.address, h.port, self.site.ssh.connect_timeout_s):
                return None  # still down: act on it
            return (
                f"the alert is {age:.0f} s old (over alerts.max_age_s = {limit:.0f} s) and "
                f"{alert.host} answers SSH now; recorded, not acted on"
            )
        return (
            f"the alert is {age:.0f} s old (over alerts.max_age_s = {limit:.0f} s) and a "
            f"{alert.kind} cannot be confirmed from the gateway; recorded, not acted on"
        )

    async def resolve_once(self, client: Any) -> None:
        """Find each open incident's run, see whether it finished, write its pending notes to
        the run's log, and say them in its Slack thread once the run has opened it."""
        open_now: list[Incident] = await self._book(self.incidents.open_incidents)
        live = {inc.run_id for inc in open_now if inc.run_id}
        for gone in [r for r in self._slack_noted_at if r not in live]:
            del self._slack_noted_at[gone]
        for gone in [r for r in self._slack_backlog if r not in live]:
            del self._slack_backlog[gone]
        open_ids = {str(inc.event_id) for inc in open_now}
        for gone in [k for k in self._unreadable_since if k not in open_ids]:
            del self._unreadable_since[gone]
        for inc in open_now:
            try:
                if inc.run_id is None:
                    found = await _find_run(client, inc, deployment_name(inc.procedure, self.site))
                    if found is not None:
                        await self._book(self.incidents.set_run, inc, found)
                if inc.run_id is None:
                    continue
                run = await self._read_run(client, inc)
                if run is None:
                    continue
                finished = bool(run.state and run.state.is_final())
                await self._book(self.incidents.set_finished, inc, finished)
                notes: list[str] = await self._book(self.incidents.take_pending, inc)
                if notes:
                    await self._log(client, inc.run_id, notes)
                    await self._book(self.incidents.notes_written, inc)
                    self._slack_backlog.setdefault(inc.run_id, []).extend(notes)
                if self._slack_backlog.get(inc.run_id):
                    await self._say_in_slack(client, inc)
            except Exception as exc:  # noqa: BLE001 - keep resolving the others; retry next time
                log.warning("could not follow the run of incident %s: %s", inc.event_id, exc)

    async def _read_run(self, client: Any, inc: Incident) -> Any:
        """The incident's run, or None when it cannot be read now; one that Prefect does not
        know, or whose id is not a run's, for `RUN_UNREADABLE_CLOSE_S` closes the incident.
        (Prefect not answering closes nothing: its runs may well be running.)"""
        from prefect.exceptions import ObjectNotFound

        key = str(inc.event_id)
        try:
            run_id = uuid.UUID(str(inc.run_id))
            run = await client.read_flow_run(run_id)
        except (ValueError, ObjectNotFound) as exc:
            now = self.incidents.clock()
            since = self._unreadable_since.setdefault(key, now)
            if now - since < RUN_UNREADABLE_CLOSE_S:
                return None
            await self._book(self.incidents.set_finished, inc, True)
            del self._unreadable_since[key]
            why = "Prefect does not know it" if isinstance(exc, ObjectNotFound) else "not a run id"
            self.audit(
                source="gateway",
                result="incident-closed",
                subject=inc.subject,
                incident=key,
                run=str(inc.run_id),
                reason=f"its run {inc.run_id} cannot be read ({why}) for "
                f"{now - since:.0f} s: the next alert for {inc.subject} starts a run",
            )
            return None
        self._unreadable_since.pop(key, None)
        return run

    async def run_forever(self, client_factory: Callable[[], Any], every_s: float = 1.0) -> None:
        """The background resolver of the gateway."""
        async with client_factory() as client:
            while True:
                await self.resolve_once(client)
                await asyncio.sleep(every_s)

    async def _log(self, client: Any, run_id: str, notes: list[str]) -> None:
        from prefect.client.schemas.actions import LogCreate

        now = dt.datetime.now(dt.UTC)
        # one microsecond apart: the log is ordered by timestamp, and lines that share one come
        # back in any order (a reader paging through them by offset may miss some)
        await client.create_logs(
            [
                LogCreate(
                    name="handover.alerts",
                    level=logging.INFO,
                    message=n,
                    timestamp=now + dt.timedelta(microseconds=i),
                    flow_run_id=run_id,
                )
                for i, n in enumerate(notes)
            ]
        )

    async def _say_in_slack(self, client: Any, inc: Incident) -> None:
        """One message for the backlog: a storm must not flood the thread (at most one note per
        10 s; the run's log has every alert)."""
        assert inc.run_id is not None
        backlog = self._slack_backlog[inc.run_id]
        if self.slack_post is None:
            backlog.clear()
            return
        mono = self.incidents.clock()
        if mono - self._slack_noted_at.get(inc.run_id, -SLACK_NOTE_EVERY_S) < SLACK_NOTE_EVERY_S:
            return
        where = await _thread_of(client, inc.run_id)
        if where is None:
            if inc.run_finished:  # its thread is closed (or it never had one)
                backlog.clear()
            return  # not opened yet: the run has not started
        # summaries and sources come from outside: shown as text, never as mentions or links
        text = (
            mrkdwn(":bell: {}", backlog[-1])
            if len(backlog) == 1
            else mrkdwn(
                ":bell: {} more alerts for this run (sources: {}); latest: {}",
                len(backlog),
                ", ".join(f"{s} {n}" for s, n in inc.sources.items()),
                backlog[-1],
            )
        )
        try:
            await asyncio.to_thread(self.slack_post, where[0], where[1], text)
        except Exception as exc:  # noqa: BLE001 - Slack is best effort
            log.warning("could not note the alert in Slack: %s", exc)
            return
        backlog.clear()
        self._slack_noted_at[inc.run_id] = mono


def _about(alert: Alert) -> dict[str, str]:
    """What an answer and an audit line say the alert is about: its host, or its geo site."""
    return {"geo_site": alert.geo_site} if alert.geo_site else {"host": alert.host}


def alert_event(
    alert: Alert,
    inc: Incident | None,
    *,
    attached: bool,
    frontend_hosts: frozenset[str] = frozenset(),
    alert_key: bytes | None = None,
) -> dict[str, Any]:
    """The Prefect event of an alert: ``handover.alert.<kind>`` for the one that opens an
    incident (what the deployment triggers expect), ``handover.alert.attached`` for the others
    (no trigger expects it: the event feed keeps them all). The one that opens an incident
    carries the gateway's seal (`payload.alert_seal`, with `alert_key`), which the triggers
    pass to the runs they start."""
    payload = alert.model_dump(mode="json")
    event_id = str(inc.event_id) if inc else str(uuid.uuid4())
    if inc is not None and alert_key is not None:
        payload["alert_seal"] = alert_seal(alert_key, event_id, alert.subject, time.time())
    return {
        "id": event_id,
        "occurred": dt.datetime.now(dt.UTC).isoformat(),
        "event": ATTACHED_EVENT if attached else event_name(alert),
        "resource": event_resource(alert, frontend_hosts),
        "related": [],
        "payload": payload,
    }


async def _find_run(client: Any, inc: Incident, deployment: str) -> str | None:
    """The flow run the incident's event started of `deployment` (the site's deployment of
    the incident's procedure; its `alert_id` parameter is the event id)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    runs = await client.read_flow_runs(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=50,
    )
    for r in runs:
        if str(r.parameters.get("alert_id", "")) == str(inc.event_id):
            return str(r.id)
    return None


async def _thread_of(client: Any, run_id: str) -> tuple[str, str] | None:
    from prefect.exceptions import ObjectNotFound

    try:
        var = await client.read_variable_by_name(thread_variable(run_id))
    except ObjectNotFound:
        return None
    if var is None or not isinstance(var.value, dict):
        return None
    channel, ts = var.value.get("channel"), var.value.get("ts")
    return (str(channel), str(ts)) if channel and ts else None
