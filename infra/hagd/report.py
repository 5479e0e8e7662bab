"""What the HA group daemon tells the handover gateway: elections, losses and failures.

Each report is a generic alert of kind ``ha_event`` (it starts no procedure by default; the
gateway notes it on the host's open incident, so it appears in the run's log and Slack thread,
and always sends it to Prefect's event feed), except a member lost from a `watch` group (the
agents' hosts watching each other), which is a ``host_down`` about that member's host and
starts the site's procedure for a lost host. Reports are signed and delivered by the hooks'
sender: sent at once, or spooled when the gateway cannot take it and sent, in order, with the
next one. Their settings are the hooks' (`infra.hooks.settings`: ``HANDOVER_GATEWAY_URL``,
``HANDOVER_SITE``, ``HANDOVER_SERVICE``, the webhook secret, ``HANDOVER_SPOOL_DIR``,
``HANDOVER_HOST_MAP`` from provider ids to the site's host names), read from the daemon's
`report` file at every send, so a file written after the daemon started is used.

Reports go out one at a time from a queue, so the gateway sees a provider's events in the
order they happened, and a slow gateway never delays a heartbeat.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

from infra.hooks.crm import encode
from infra.hooks.pacemaker_alert import submit
from infra.hooks.settings import load_config

log = logging.getLogger("handover.hagd")

#: master: this provider was elected and its service started; lost: a member was not heard for
#: dT1; failure: this provider's start or status failed and it no longer stands; giveup: it
#: stopped its service (a human, or another master); pool: it changed a stateless pool's records
What = Literal["master", "lost", "failure", "giveup", "pool"]
SEVERITY: dict[str, str] = {"master": "warning", "lost": "critical", "failure": "critical"}


def ha_alert(
    *,
    site: str,
    service: str,
    host: str,
    provider: str,
    group: str,
    what: What,
    detail: str,
    now: dt.datetime,
    seq: int,
    watch: bool = False,
) -> dict[str, Any]:
    """The generic alert of one group event (`host`: the site's host the event is about).

    A member lost from a `watch` group is a ``host_down`` about that member's host: the
    gateway starts the site's procedure for a lost host. Every other event is an ``ha_event``.
    """
    host_down = watch and what == "lost"
    return {
        "site": site,
        "host": host,
        "service": service,
        "kind": "host_down" if host_down else "ha_event",
        "severity": SEVERITY.get(what, "info"),
        "time": now.isoformat(),
        "summary": f"hagd group {group} on {provider}: {what}: {detail}",
        "source": "hagd",
        "dedup_key": f"hagd:{provider}:{group}:{what}:{int(now.timestamp())}:{seq}",
        "hagd": {"group": group, "provider": provider, "event": what, "detail": detail},
    }


class Reporter:
    """Sends a daemon's reports in order (a no-op without a `report` file)."""

    def __init__(
        self, report_file: Path | None, provider: str, *, watch: frozenset[str] = frozenset()
    ) -> None:
        self.report_file = report_file
        self.provider = provider
        #: the watch groups: a member lost there is reported as ``host_down``
        self.watch = watch
        self.queue: asyncio.Queue[tuple[str, str, What, str]] = asyncio.Queue()
        self.seq = 0
        self.outcomes: dict[str, int] = {}

    def report(self, group: str, about: str, what: What, detail: str) -> None:
        """Queue one report (`about`: the provider the event is about)."""
        if self.report_file is not None:
            self.queue.put_nowait((group, about, what, detail))

    async def run(self) -> None:
        """Send the queued reports until cancelled."""
        while True:
            group, about, what, detail = await self.queue.get()
            try:
                outcome = await asyncio.to_thread(self._send, group, about, what, detail)
            except Exception as exc:  # noqa: BLE001 - a report must never stop the daemon
                outcome = f"error: {exc}"
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def _send(self, group: str, about: str, what: What, detail: str) -> str:
        assert self.report_file is not None
        cfg = load_config({**os.environ, "HANDOVER_HOOK_CONFIG": str(self.report_file)})
        if cfg.site is None or cfg.service is None:
            log.error("cannot report %s of %s: no HANDOVER_SITE/HANDOVER_SERVICE", what, group)
            return "unconfigured"
        self.seq += 1
        body = encode(
            ha_alert(
                site=cfg.site,
                service=cfg.service,
                host=cfg.host_map.get(about, about),
                provider=self.provider,
                group=group,
                what=what,
                detail=detail,
                now=dt.datetime.now(dt.UTC),
                seq=self.seq,
                watch=group in self.watch,
            )
        )
        outcome = submit(
            body,
            cfg,
            deadline=time.monotonic() + cfg.timeout_s + 1,
            log=lambda line: log.warning("report: %s", line),
        )
        return outcome
