"""A stateless pool: one host name bound to the addresses of every provider
that serves, kept by the group (pure; time is given).

Every provider of a pool group serves at once (a web server, a BDII): there is no election of a
master. Each provider runs its status script every `check` seconds and says in its heartbeat
whether it serves and at which address. The live member with the highest rank (ties: the
greater id) keeps the name's round-robin A records: the addresses of the live members that
serve. A member not heard for `dT1` is dead and leaves the set; one heard again whose status
says it serves comes back. The keeper changes the records with one compare-and-set update (the
prerequisite is the set it read), so two keepers (a partition) never undo each other blindly.

The name never loses its last address: when no member serves, the records are left as they are
(a name that resolves to nothing is worse for clients than one dead address) and the plan says
so.

A member's advertised address is put in the name only if the configuration allows it for that
member (`allowed`: `pool.GROUP.addresses`, else its address in `peers`). A member advertising
another address is not published and does not keep the name either (it could publish itself);
the plan lists it in `refused`, with the address it advertises and the one allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PoolMember:
    """Another provider of the pool, as last heard."""

    rank: int
    serving: bool
    address: str
    heard_at: float


@dataclass(frozen=True)
class PoolPlan:
    """What the keeper does with the name's A records now."""

    #: this provider keeps the records (the highest live rank)
    keeper: bool
    #: who keeps them
    keeper_id: str
    #: the addresses the name should hold (sorted)
    want: list[str]
    #: the addresses to add and to remove (empty when nothing is to change)
    add: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    #: why nothing changes although something should (e.g. no member serves)
    note: str = ""
    #: live members not published, each with why: the address it advertises is not allowed
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        """The update is to be sent."""
        return self.keeper and bool(self.add or self.remove)


def plan_pool(
    *,
    me: str,
    rank: int,
    serving: bool,
    address: str,
    members: dict[str, PoolMember],
    allowed: Mapping[str, str],
    now: float,
    dt1: float,
    current: list[str],
) -> PoolPlan:
    """The records the pool's name should hold, and whether this provider changes them.

    Args:
        me: this provider's id; rank, serving, address: its own line.
        members: the other providers as last heard.
        allowed: the one address each other member may advertise (a member not in it: none).
        now: the time; a member heard more than `dt1` ago is dead.
        current: the name's A records as the primary answers them now.
    """
    live = {k: m for k, m in members.items() if now - m.heard_at <= dt1}
    refused = {
        k: f"{k} advertises {m.address}, but the configuration allows "
        f"{allowed[k] if k in allowed else 'no address'} for it: not published"
        for k, m in sorted(live.items())
        if allowed.get(k) != m.address
    }
    vouched = {k: m for k, m in live.items() if allowed.get(k) == m.address}
    keeper = max([(rank, me)] + [(m.rank, k) for k, m in vouched.items()])[1]
    want = sorted(
        {m.address for m in vouched.values() if m.serving} | ({address} if serving else set())
    )
    if keeper != me:
        return PoolPlan(keeper=False, keeper_id=keeper, want=want, refused=refused)
    if not want:
        return PoolPlan(
            keeper=True,
            keeper_id=me,
            want=want,
            note="no member serves: the records are kept as they are "
            f"({', '.join(current) or 'none'})",
            refused=refused,
        )
    have = set(current)
    return PoolPlan(
        keeper=True,
        keeper_id=me,
        want=want,
        add=sorted(set(want) - have),
        remove=sorted(have - set(want)),
        refused=refused,
    )
