"""What HA group daemons say to each other, and how a message is trusted (pure).

A message is one UDP datagram of compact JSON: the sender's id, a boot id (random per start),
a sequence number and the time, and for each of its groups a keyed digest of the group's name
(HMAC-SHA256 of the name under the shared key: names never appear in clear), its rank and its
mode (and in a stateless pool, the address the provider serves on); then ``sig``, the
HMAC-SHA256 of everything before it under the shared key (the key never appears). A receiver
drops a message that is malformed, signed with another key, or (with `peers` configured) not sent
from the address listed for the member it names (`check_source`); then one that is older than
dT1 + skew or more than skew ahead of the receiver's clock, or whose (sender, boot) sequence
number is not newer than the last one accepted: a replayed or reordered message is ignored
(`Freshness`).

**Time.** A member is alive while its last message is less than dT1 old by the time the message
*says* it was sent, not by the time it arrived: heartbeats that a delayed network or a replayed
backlog delivers late do not keep a dead member alive. The members' clocks may differ by up to
`skew` seconds (keep them in step with NTP): a message counts as sent at its time plus `skew`,
but never later than its arrival (`heard_at`). So a member whose clock runs behind (by up to
`skew`) is not taken for dead early, one whose clock runs ahead is never alive longer than its
last arrival + dT1, and
a dead member is declared dead between dT1 and dT1 + skew after its last heartbeat was sent
(dT1 + 2 skew when its clock was ahead by the full skew). A message older than dT1 + skew could
not make its sender alive at all; it is dropped as stale, and one more than `skew` ahead as from
the future: both are counted, and a member whose clock is off by more than `skew` is heard by
nobody (its drops in `handover hagd status` say so).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["initial", "normal", "takeover", "master", "giveup", "failure"]
MODES: tuple[Mode, ...] = ("initial", "normal", "takeover", "master", "giveup", "failure")
#: a datagram larger than this is not read
MAX_BYTES = 8192


def group_digest(key: bytes, name: str) -> str:
    """The name of a group as it travels: a keyed digest (the name never appears)."""
    return hmac.new(key, b"hagd-group:" + name.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class GroupState:
    """One group's line in a heartbeat."""

    digest: str
    rank: int
    mode: Mode
    #: the provider does not stand in elections (after a manual give-up, until a new master)
    yields: bool = False
    #: a stateless pool's member: the address its service answers on ("" in other groups)
    address: str = ""


@dataclass(frozen=True)
class Message:
    """A heartbeat."""

    sender: str
    boot: str
    seq: int
    time: float
    groups: tuple[GroupState, ...]


def encode(msg: Message, key: bytes) -> bytes:
    """The signed datagram of a message."""
    body = json.dumps(
        {
            "v": 1,
            "id": msg.sender,
            "boot": msg.boot,
            "seq": msg.seq,
            "t": round(msg.time, 3),
            "g": [
                [g.digest, g.rank, g.mode, int(g.yields)] + ([g.address] if g.address else [])
                for g in msg.groups
            ],
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    sig = hmac.new(key, body, hashlib.sha256).hexdigest()
    return body[:-1] + b',"sig":"' + sig.encode() + b'"}'


class Rejected(ValueError):
    """A datagram that is not a trusted, fresh message (the reason is the message)."""


def decode(data: bytes, key: bytes) -> Message:
    """Verify and parse a datagram.

    Raises:
        Rejected: not a message, or not signed with `key`.
    """
    if len(data) > MAX_BYTES:
        raise Rejected(f"datagram of {len(data)} bytes")
    marker = b',"sig":"'
    cut = data.rfind(marker)
    if cut < 0 or not data.endswith(b'"}'):
        raise Rejected("unsigned datagram")
    body = data[:cut] + b"}"
    sig = data[cut + len(marker) : -2]
    want = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(sig, want):
        raise Rejected("bad signature (another key, or altered)")
    try:
        raw = json.loads(body)
        groups = tuple(_group(g) for g in raw["g"])
        return Message(
            sender=str(raw["id"]),
            boot=str(raw["boot"]),
            seq=int(raw["seq"]),
            time=float(raw["t"]),
            groups=groups,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise Rejected(f"malformed message: {exc}") from None


def _group(g: list[object]) -> GroupState:
    if not isinstance(g, list) or len(g) not in (4, 5):
        raise ValueError(f"a group line of {len(g) if isinstance(g, list) else 'no'} items")
    d, r, m, y = g[:4]
    return GroupState(
        digest=str(d),
        rank=int(r),  # type: ignore[call-overload]
        mode=_mode(m),
        yields=bool(y),
        address=str(g[4]) if len(g) == 5 else "",
    )


def _mode(m: object) -> Mode:
    if m not in MODES:
        raise ValueError(f"unknown mode {m!r}")
    return m


def heard_at(sent: float, now: float, skew: float) -> float:
    """When a member counts as last heard, for its liveness (module docstring, **Time**).

    Args:
        sent: the time its message says it was sent (the sender's clock).
        now: the message's arrival (this provider's clock).
        skew: how far apart the members' clocks may be.

    Example:
        >>> heard_at(100.0, 100.8, 0.25)  # 0.8 s in the network: heard as of 100.25
        100.25
        >>> heard_at(100.0, 100.1, 0.25)  # never later than its arrival
        100.1
    """
    return min(sent + skew, now)


def check_source(msg: Message, source: str, peers: Mapping[str, str]) -> None:
    """With `peers` (member id -> address) configured, accept a message only from the address
    listed for the member it names; without them (broadcast only) nothing is checked.

    Raises:
        Rejected: the member is not listed, or the datagram came from another address.
    """
    if not peers:
        return
    want = peers.get(msg.sender)
    if want is None:
        raise Rejected(f"unknown member ({msg.sender!r} is not in `peers`; sent from {source})")
    if source != want:
        raise Rejected(
            f"wrong source address ({msg.sender} is at {want} in `peers`, this came from "
            f"{source}: another host holding the key, or a forged source)"
        )


@dataclass
class Freshness:
    """Drops stale, future, replayed and reordered messages (sequence numbers per sender and
    boot). `max_age_s` is dT1 + skew and `max_ahead_s` the skew (module docstring, **Time**)."""

    max_age_s: float
    max_ahead_s: float
    last: dict[tuple[str, str], int] = field(default_factory=dict)

    def check(self, msg: Message, now: float) -> None:
        """Accept the message (and remember its sequence number) or raise `Rejected`."""
        age = now - msg.time
        if age > self.max_age_s:
            raise Rejected(
                f"stale message (sent {age:.2f} s ago, more than dT1 + skew = "
                f"{self.max_age_s:g} s: delayed, replayed, or the sender's clock is behind)"
            )
        if -age > self.max_ahead_s:
            raise Rejected(
                f"message from the future ({-age:.2f} s ahead of this clock, more than skew = "
                f"{self.max_ahead_s:g} s: keep the members' clocks in step, or raise `skew`)"
            )
        key = (msg.sender, msg.boot)
        if msg.seq <= self.last.get(key, -1):
            raise Rejected(f"replayed message (seq {msg.seq})")
        self.last[key] = msg.seq
