"""One HA group as one provider sees it: members, election by rank, modes (pure; time is given).

The modes: **initial** (just started: listening for `dT1` to learn the group),
**normal** (a master is known, or being elected; the service is stopped here), **takeover**
(elected, or asked by a human: announcing it for `dT2` so that a master that still runs stops,
then starting the service), **master** (the service runs here), **giveup** (stopping the service:
a human asked, or another provider takes over), **failure** (the start script failed or hung:
this provider no longer stands until it is reset; so does a master whose status script fails).

Rules, applied by `tick` and `heard`:

* a member not heard for `dT1` is dead, counting from the time its last message says it was
  sent (plus the tolerated clock `skew`, never later than its arrival: `protocol.heard_at`), so
  heartbeats delivered late do not keep a dead member alive;
* with no live master (or member taking over) in the group, the highest rank among the live
  members that stand (not failed, not yielding), this provider included, is elected; ties go to
  the greater id; the elected one takes over;
* a master that hears another member take over gives up (a manual takeover, or two masters after
  a partition: of two masters the lower rank gives up);
* of two members taking over at once the lower rank steps back;
* a returning higher rank does not pre-empt a live master unless `preempt`;
* after a manual give-up the provider yields (does not stand) until a new master is heard;
* a master whose status script fails `check_failures` times in a row gives up and stops
  standing (failure) until reset.

The state machine never runs scripts itself: `tick` returns the actions to take (``start`` or
``stop``) and the daemon reports their outcome with `started` and `stopped`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from infra.hagd.protocol import GroupState, Mode, heard_at

Action = Literal["start", "stop"]


@dataclass
class Member:
    """Another provider of the group, as last heard."""

    rank: int
    mode: Mode
    yields: bool
    #: when it was last known alive: its last message's send time + skew, at most its arrival
    heard_at: float


@dataclass
class Group:
    """This provider's view of one group."""

    name: str
    digest: str
    me: str
    rank: int
    dt1: float
    dt2: float
    started_at: float
    preempt: bool = False
    #: how far apart the members' clocks may be (`infra.hagd.protocol`, **Time**)
    skew: float = 0.0
    mode: Mode = "initial"
    since: float = 0.0
    yields: bool = False
    members: dict[str, Member] = field(default_factory=dict)
    #: what happened, newest last (the last 50, for status and reports) ...
    events: list[str] = field(default_factory=list)
    #: ... and how many events there have been
    event_count: int = 0
    #: a script is running for this group (no new action until it reports)
    busy: bool = False
    #: the last master heard, for status
    master: str | None = None
    #: giving up because the service's status failed: the stop ends in failure, not normal
    failing: bool = False
    #: status checks that must fail in a row before the master gives up (one slow answer under
    #: load is not a dead service)
    check_failures: int = 1
    #: status checks failed in a row so far
    failed_checks: int = 0

    def __post_init__(self) -> None:
        self.since = self.started_at

    # --- what others say -----------------------------------------------------------------------

    def heard(self, sender: str, state: GroupState, now: float, *, sent: float) -> None:
        """A member's heartbeat for this group, arrived at `now`, sent at `sent` (its time)."""
        if sender == self.me:
            return
        at = heard_at(sent, now, self.skew)
        self.members[sender] = Member(state.rank, state.mode, state.yields, at)
        if state.mode == "master":
            self.master = sender
            if self.yields:
                self.yields = False  # a new master: stand again
        if self.mode == "master" and state.mode in ("takeover", "master") and not self.busy:
            if state.mode == "takeover" or self._outranks(sender, state.rank):
                why = "takes over" if state.mode == "takeover" else "is master too (partition)"
                self._to("giveup", now, f"{sender} {why}: giving up")
        if self.mode == "takeover" and state.mode == "takeover" and not self.busy:
            if self._outranks(sender, state.rank):
                self._to("normal", now, f"{sender} (rank {state.rank}) takes over: stepping back")

    def _outranks(self, other: str, rank: int) -> bool:
        return (rank, other) > (self.rank, self.me)

    # --- the clock -----------------------------------------------------------------------------

    def alive(self, now: float) -> dict[str, Member]:
        """The members heard within dT1."""
        return {k: m for k, m in self.members.items() if now - m.heard_at <= self.dt1}

    def tick(self, now: float) -> list[Action]:
        """Advance by the clock; return the script actions to run now."""
        if self.busy:
            return []
        live = self.alive(now)
        if self.mode == "initial":
            if now - self.since < self.dt1:
                return []
            self._to("normal", now, "initial listening period over")
        if self.mode == "giveup":
            self.busy = True
            return ["stop"]
        if self.mode == "takeover":
            if now - self.since >= self.dt2:
                self.busy = True
                return ["start"]
            return []
        if self.mode in ("master", "failure"):
            return []
        # normal: is there a master (or somebody taking over)?
        leading = {k: m for k, m in live.items() if m.mode in ("master", "takeover")}
        if leading:
            self.master = next((k for k, m in leading.items() if m.mode == "master"), self.master)
            best = max(leading.items(), key=lambda kv: (kv[1].rank, kv[0]))
            if (
                self.preempt
                and best[1].mode == "master"
                and not self._outranks(*_name_and_rank(best))
            ):
                if not self.yields:
                    self._to("takeover", now, f"pre-empting {best[0]} (rank {best[1].rank})")
            return []
        if self.yields:
            return []
        standing = {
            k: m.rank for k, m in live.items() if m.mode not in ("failure",) and not m.yields
        }
        if all(not self._outranks(k, r) for k, r in standing.items()):
            gone = f"; {self.master} not heard for {self.dt1:g} s" if self.master else ""
            self._to("takeover", now, f"elected (rank {self.rank}){gone}")
        return []

    # --- what the script did -------------------------------------------------------------------

    def started(self, ok: bool, now: float, detail: str = "") -> None:
        """The start script ended (ok: exit 0 within its timeout)."""
        self.busy = False
        if self.mode != "takeover":
            return
        if ok:
            self.master = self.me
            self._to("master", now, "service started: group master")
        else:
            self._to("failure", now, f"service start failed ({detail}): no longer standing")

    def checked(self, ok: bool, now: float, detail: str = "") -> None:
        """The status script ended (run on the master every `check` seconds).

        A master whose service no longer serves (`check_failures` checks in a row) gives up and
        stops standing: its group elects another master, and a human resets this one once it
        is repaired. A master fenced by a newer one (a partition healed, a switch made
        elsewhere) is such a master.
        """
        self.busy = False
        if ok or self.mode != "master":
            self.failed_checks = 0
            return
        self.failed_checks += 1
        if self.failed_checks < self.check_failures:
            self._note(
                f"check: service status failed ({detail}): "
                f"{self.failed_checks} of {self.check_failures} in a row"
            )
            return
        self.failed_checks = 0
        self.failing = True
        self._to("giveup", now, f"service status failed ({detail}): giving up")

    def stopped(self, ok: bool, now: float, detail: str = "") -> None:
        """The stop script ended."""
        self.busy = False
        if self.mode != "giveup":
            return
        self.master = None if self.master == self.me else self.master
        failed = "" if ok else f" (the stop script failed: {detail})"
        if self.failing:
            self.failing = False
            self._to("failure", now, f"service stopped{failed}: no longer standing until reset")
            return
        self._to("normal", now, "service stopped" + failed)

    # --- humans --------------------------------------------------------------------------------

    def takeover(self, now: float) -> str:
        """A manual takeover here: the master gives up within dT2, then this starts."""
        if self.mode in ("master", "takeover"):
            return f"{self.name}: already {self.mode} here"
        self.yields = False
        self._to("takeover", now, "manual takeover")
        return f"{self.name}: taking over; the master stops within {self.dt2:g} s"

    def giveup(self, now: float) -> str:
        """A manual give-up of the master: the next rank is elected."""
        if self.mode != "master":
            return f"{self.name}: not master here ({self.mode}); nothing to give up"
        self.yields = True
        self._to("giveup", now, "manual give-up")
        return f"{self.name}: giving up; the next rank takes over"

    def reset(self, now: float) -> str:
        """Stand again after a failure."""
        if self.mode != "failure":
            return f"{self.name}: not in failure ({self.mode})"
        self._to("normal", now, "reset by a human: standing again")
        return f"{self.name}: standing again"

    # --- state ---------------------------------------------------------------------------------

    def state(self) -> GroupState:
        """This provider's line in its heartbeat."""
        return GroupState(digest=self.digest, rank=self.rank, mode=self.mode, yields=self.yields)

    def _to(self, mode: Mode, now: float, why: str) -> None:
        self.mode = mode
        self.since = now
        self._note(f"{mode}: {why}")

    def _note(self, event: str) -> None:
        self.events.append(event)
        self.event_count += 1
        del self.events[:-50]


def _name_and_rank(kv: tuple[str, Member]) -> tuple[str, int]:
    return kv[0], kv[1].rank
