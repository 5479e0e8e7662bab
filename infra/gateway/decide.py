"""Who may resume a paused procedure, and the resume itself (the same for every transport).

`Decider.decide` takes a decision already authenticated by its transport (a Slack request whose
signature was verified, or a Socket Mode envelope) and checks, in order: the action, the run id,
that the run exists, belongs to this gateway's site and waits for an approval, that the user is an
approver (user IDs or a user group from the site file) and, under the two-person rule, that the
run gets two approvers unless its requester is verified. Only then does it resume the run with
the typed input, sealed for the run and the pause it answers (`flows.seals`). Every outcome,
refused or not, is an audit line.

Who requested a run is a parameter (`requested_by`) that whoever creates the run sets freely (the
CLI's `getpass.getuser()` reads `$LOGNAME`), so it is never taken as an identity: the one
requester verified is the monitoring, for a run that carries the gateway's seal of the alert that
started it. Under the two-person rule every other run needs two distinct approvers, and an
approver that the site's `slack.operators` maps the claimed requester to is not one of them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from config.loader import SiteConfigError, load_site_ref
from config.site import Site
from flows.approval import resume_with_input
from flows.seals import alert_seal_holds, geo_site_subject, seal

audit_log = logging.getLogger("handover.audit")

ACTIONS = {"approve": "approve", "reject": "reject"}
GROUP_CACHE_S = 60.0
#: audit entries kept in memory (a flood of refused requests must not grow the gateway)
AUDIT_KEEP = 1000


@dataclass
class Decision:
    """What became of a click: resumed or refused, and the words for the user."""

    resumed: bool
    message: str
    reason: str = ""


@dataclass
class Decider:
    """Checks and applies decisions for one site."""

    site: Site
    group_members: Any = None  # callable(group_id) -> list[str], e.g. Slack's usergroups.users.list
    #: the latest audit entries (every entry is also a log line; memory stays bounded)
    audit: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=AUDIT_KEEP))
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _group_cache: tuple[float, set[str]] = (0.0, set())
    #: the first approver of each pause that needs two (two-person rule, unverified requester),
    #: by run and pause key
    _first_approvals: dict[tuple[str, str], str] = field(default_factory=dict)
    #: the key of the seal on decisions (`flows.seals`; None: decisions go unsealed)
    seal_key: bytes | None = None
    #: the key of the gateway's seal on alerts (None: no run counts as an alert's)
    alert_key: bytes | None = None
    #: every audit entry counted by (source, result, HTTP status): the gateway's `/metrics`
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def _lock_for(self, run_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(run_id, threading.Lock())

    def record(self, **entry: Any) -> None:
        """Append an audit entry and write it as one JSON log line."""
        entry = {"at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), **entry}
        key = (
            str(entry.get("source", "")),
            str(entry.get("result", "")),
            str(entry.get("status", "")),
        )
        with self._guard:
            self.audit.append(entry)
            self.counts[key] += 1
        audit_log.info("%s", json.dumps(entry, sort_keys=True))

    def approvers(self) -> set[str]:
        """User IDs allowed to decide: the listed ones plus the group's members (cached 60 s)."""
        slack = self.site.slack
        if slack is None:
            return set()
        allowed = set(slack.approvers)
        if slack.approver_group and self.group_members is not None:
            at, members = self._group_cache
            if time.monotonic() - at > GROUP_CACHE_S:
                try:
                    members = set(self.group_members(slack.approver_group))
                    self._group_cache = (time.monotonic(), members)
                except Exception as exc:  # noqa: BLE001 - fall back to the listed approvers
                    # not the old members: someone removed from the group must not keep
                    # approving while Slack cannot be asked
                    members = set()
                    self._group_cache = (0.0, members)
                    audit_log.warning(
                        "could not read user group %s (only the listed approvers may decide): %s",
                        slack.approver_group,
                        exc,
                    )
            allowed |= members
        return allowed

    def _started_by_an_alert(self, run: Any) -> bool:
        """Whether the run carries the gateway's seal of the alert that started it (its
        requester is then the monitoring, not a person)."""
        params = run.parameters or {}
        alerts = self.site.alerts
        subject = str(params.get("host") or params.get("failed_host") or "")
        if not subject and params.get("geo_site"):
            subject = geo_site_subject(str(params["geo_site"]))
        if alerts is None or run.created is None:
            return False
        return alert_seal_holds(
            self.alert_key,
            str(params.get("alert_id") or ""),
            subject,
            str(params.get("alert_seal") or ""),
            created_at=run.created.timestamp(),
            max_age_s=alerts.max_age_s,
        )

    def decide(
        self, *, user_id: str, user_name: str, action_id: str, value: str, source: str
    ) -> Decision:
        """Check and apply one decision (see the module docstring for the order of checks)."""
        base = {"user": user_id, "action": action_id, "run": value, "source": source}

        def refuse(reason: str, message: str) -> Decision:
            self.record(**base, result="refused", reason=reason)
            return Decision(False, message, reason)

        decision = ACTIONS.get(action_id)
        if decision is None:
            return refuse("unknown-action", f"Unknown action {action_id!r}.")
        try:
            run_id = UUID(value)
        except (ValueError, TypeError):
            return refuse("bad-run-id", "This button does not name a run.")
        with get_client(sync_client=True) as client:
            try:
                run = client.read_flow_run(run_id)
            except ObjectNotFound:
                return refuse("unknown-run", f"No run {run_id} is known; nothing was resumed.")
        site_file = (run.parameters or {}).get("site_file")
        try:
            loaded = load_site_ref(site_file) if site_file else None
        except SiteConfigError:
            loaded = None
        # a site and service: two site files of one site name (two services) decide apart
        run_site = (loaded.site, loaded.service.name) if loaded else None
        if run_site != (self.site.site, self.site.service.name):
            return refuse("other-site", f"Run {run.name} is not a run of site {self.site.site}.")
        if user_id not in self.approvers():
            return refuse(
                "not-an-approver",
                f"You are not an approver for site {self.site.site}; nothing was "
                "resumed. Ask one of the site's approvers.",
            )
        slack = self.site.slack
        params = run.parameters or {}
        requester = str(params.get("requested_by") or "")
        by_alert = self._started_by_an_alert(run)
        # a name someone typed: its Slack user (if the site maps it) may not decide, and nobody
        # else may decide alone
        claimed = slack.operators.get(requester) if slack is not None else None
        two_person = slack is not None and slack.two_person_rule and not by_alert
        if two_person and claimed == user_id:
            return refuse(
                "own-request", "Two-person rule: you requested this run, someone else must decide."
            )
        approvers_so_far: list[str] = []
        with self._lock_for(str(run_id)):
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run_id).state
            if state is None or not state.is_paused():
                name = state.name if state else "unknown"
                return refuse(
                    "not-waiting",
                    f"Run {run.name} is not waiting for a decision (it is {name}); "
                    "it was decided already or has ended.",
                )
            pause_key = str(state.state_details.pause_key or "")
            if two_person and decision == "approve":
                # nobody knows who asked: two distinct approvers are needed, for this pause
                first = self._first_approvals.get((str(run_id), pause_key))
                if first is None:
                    self._first_approvals[(str(run_id), pause_key)] = user_id
                    self.record(**base, result="first-approval", requester=requester)
                    return Decision(
                        False,
                        f"Your approval of run {run.name} is recorded. Its requester "
                        f"({requester or 'unknown'}) is a name given with the run, not a "
                        "verified identity, so a second approver must approve too (two-person "
                        "rule).",
                        "second-approver-needed",
                    )
                if first == user_id:
                    return refuse(
                        "same-approver",
                        "Two-person rule: you approved this run already; another approver "
                        "must approve it.",
                    )
                approvers_so_far = [first]
            who = f"<@{user_id}>" if source == "Slack" else user_name or user_id
            if approvers_so_far:
                who = " and ".join([*(f"<@{u}>" for u in approvers_so_far), who])
            try:
                resume_with_input(
                    run_id,
                    run_input={
                        "decision": decision,
                        "who": who,
                        "comment": "",
                        "source": source,
                        "seal": seal(self.seal_key, str(run_id), pause_key, decision, who, source)
                        if self.seal_key is not None
                        else "",
                    },
                )
            except Exception as exc:  # noqa: BLE001 - said to the user and audited
                return refuse("resume-failed", f"Could not resume run {run.name}: {exc}")
        self.record(**base, result="resumed", decision=decision, flow_run=run.name)
        verb = "Approved" if decision == "approve" else "Rejected"
        return Decision(True, f"{verb}: run {run.name} resumes.")
