"""One stateless pool group in the daemon: status checks, members heard, and the name's records.

The daemon hands it the heartbeats of its group and calls `step` on every tick. For dT1 after
it starts it only listens (and checks its status): a provider that has not heard the pool yet
would take itself for the keeper and write the name with its own address alone. It runs
``SCRIPT status GROUP`` every `check` seconds (a status that fails or hangs: not serving), says
in the heartbeat whether this provider serves and where, and, when the plan (`infra.hagd.pool`)
makes it the keeper, reads the name on the zone's primary and changes its A records with one
compare-and-set update (`tasks.adapters.dns.replace_addresses`). It reads again at once when a
member is lost, comes back, or starts or stops serving, and every `SYNC_S` seconds otherwise
(somebody may have changed the records by hand). DNS work runs in a thread: a slow server never
delays a heartbeat. A member that advertises an address the configuration does not allow for it
(`allowed`) is not published: every member says so in its events and log when it hears it, and
the keeper reports it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from config.site import Dns
from infra.hagd.pool import PoolMember, PoolPlan, plan_pool
from infra.hagd.protocol import GroupState, heard_at
from infra.hagd.report import Reporter

log = logging.getLogger("handover.hagd")
#: the keeper reads the name this often when nothing changed
SYNC_S = 10.0

Script = Callable[[str, str], Awaitable[tuple[bool, str]]]


class PoolKeeper:
    """A pool group as this provider keeps it."""

    def __init__(
        self,
        *,
        name: str,
        digest: str,
        me: str,
        rank: int,
        address: str,
        allowed: dict[str, str],
        dns: Dns,
        dt1: float,
        skew: float,
        check: float,
        reporter: Reporter,
        started_at: float,
    ) -> None:
        self.name = name
        self.digest = digest
        self.me = me
        self.rank = rank
        self.address = address
        #: the one address each other member may advertise (`HagdConfig.pool_allowed`)
        self.allowed = allowed
        self.dns = dns
        self.dt1 = dt1
        self.skew = skew
        self.started_at = started_at
        self.check = check
        self.reporter = reporter
        self.key = dns.tsig_key.resolve().get_secret_value()
        self.serving = False
        self.members: dict[str, PoolMember] = {}
        self.records: list[str] = []
        self.plan: PoolPlan | None = None
        self.error = ""
        self.events: list[str] = []
        self.event_count = 0
        self._checking = False
        self._syncing = False
        self._next_check = 0.0
        self._next_sync = 0.0
        self._seen: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())

    # --- heartbeats ----------------------------------------------------------------------------

    def heard(self, sender: str, state: GroupState, now: float, *, sent: float) -> None:
        """A member's heartbeat line for this pool, arrived at `now`, sent at `sent`."""
        if sender == self.me:
            return
        before = self.members.get(sender)
        self.members[sender] = PoolMember(
            state.rank, state.mode == "master", state.address, heard_at(sent, now, self.skew)
        )
        if before is not None and before.address == state.address:
            return
        self._next_sync = 0.0  # what the name should hold may have changed
        if self.allowed.get(sender) != state.address:
            allowed = self.allowed.get(sender) or "no address"
            self._event(
                f"{sender} advertises {state.address or 'no address'}, but the configuration "
                f"allows {allowed} for it: not published (pool.{self.name}.addresses, or its "
                "address in peers)"
            )

    def state(self) -> GroupState:
        """This provider's line: mode ``master`` while its service serves."""
        return GroupState(
            digest=self.digest,
            rank=self.rank,
            mode="master" if self.serving else "normal",
            address=self.address,
        )

    # --- the clock -----------------------------------------------------------------------------

    def step(self, now: float, script: Script, spawn: Callable[[Awaitable[None]], None]) -> None:
        """Start the status check and the sync that are due (each runs once at a time)."""
        alive = frozenset(k for k, m in self.members.items() if now - m.heard_at <= self.dt1)
        serving = frozenset(k for k in alive if self.members[k].serving)
        for gone in sorted(self._seen[0] - alive):
            m = self.members[gone]
            self._event(f"{gone} ({m.address}) not heard for {self.dt1:g} s")
            self.reporter.report(self.name, gone, "lost", self.events[-1])
        for back in sorted(alive - self._seen[0]):
            self._event(f"{back} ({self.members[back].address}) heard")
        changed = (alive, serving) != self._seen
        self._seen = (alive, serving)
        if not self._checking and now >= self._next_check:
            self._checking = True
            spawn(self._status(script))
        listening = now - self.started_at < self.dt1
        if not self._syncing and not listening and (changed or now >= self._next_sync):
            self._syncing = True
            spawn(self._sync())

    async def _status(self, script: Script) -> None:
        try:
            ok, detail = await script("status", self.name)
        finally:
            self._checking = False
            self._next_check = time.time() + self.check
        if ok != self.serving:
            self.serving = ok
            self._event(
                f"serving at {self.address}" if ok else f"not serving ({detail or 'status failed'})"
            )
            self._next_sync = 0.0  # the keeper (maybe this one) adds or removes it now

    async def _sync(self) -> None:
        try:
            await asyncio.to_thread(self._sync_now)
        except Exception as exc:  # noqa: BLE001 - said in status and the log; retried
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("%s: the name %s: %s", self.name, self.dns.alias, self.error)
        else:
            self.error = ""
        finally:
            self._syncing = False
            self._next_sync = time.time() + SYNC_S

    def _sync_now(self) -> None:
        from tasks.adapters.dns import AliasChanged, read_alias, replace_addresses

        self.records = read_alias(self.dns, self.dns.servers()[0]).addresses
        plan = plan_pool(
            me=self.me,
            rank=self.rank,
            serving=self.serving,
            address=self.address,
            members=dict(self.members),
            allowed=self.allowed,
            now=time.time(),
            dt1=self.dt1,
            current=self.records,
        )
        if plan.note and (self.plan is None or self.plan.note != plan.note):
            self._event(plan.note)
        if plan.keeper:
            said = self.plan.refused if self.plan and self.plan.keeper else {}
            for member, why in plan.refused.items():
                if said.get(member) != why:
                    self.reporter.report(self.name, member, "pool", why)
        self.plan = plan
        if not plan.changes:
            return
        try:
            after = replace_addresses(self.dns, self.key, self.records, plan.want)
        except AliasChanged as exc:
            self._event(f"{self.dns.alias} changed meanwhile: {exc}; reading it again")
            self._next_sync = 0.0
            return
        self.records = after.addresses
        what = "; ".join(
            part
            for part in (
                f"added {', '.join(plan.add)}" if plan.add else "",
                f"removed {', '.join(plan.remove)}" if plan.remove else "",
            )
            if part
        )
        self._event(f"{self.dns.alias}: {what} (now {', '.join(self.records)})")
        self.reporter.report(self.name, self.me, "pool", self.events[-1])

    def _event(self, text: str) -> None:
        log.warning("%s: %s", self.name, text)
        self.events.append(text)
        self.event_count += 1
        del self.events[:-50]

    # --- status --------------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        """This pool in `handover hagd status --json`."""
        return {
            "rank": self.rank,
            "mode": "pool",
            "serving": self.serving,
            "address": self.address,
            "name": self.dns.alias,
            "records": self.records,
            "keeper": self.plan.keeper_id if self.plan else None,
            "refused": list(self.plan.refused.values()) if self.plan else [],
            "error": self.error,
            "members": {
                k: {
                    "rank": m.rank,
                    "serving": m.serving,
                    "address": m.address,
                    "address_allowed": self.allowed.get(k) == m.address,
                    "heard_s_ago": round(now - m.heard_at, 3),
                    "alive": now - m.heard_at <= self.dt1,
                }
                for k, m in sorted(self.members.items())
            },
            "events": self.events[-10:],
            "event_count": self.event_count,
        }
