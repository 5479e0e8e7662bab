"""What HA group daemons say to each other, and how a message is trusted (pure).

A message is one UDP datagram of compact JSON: the sender's id, a boot id (random per start),
a sequence number and the time, and for each of its groups a keyed digest of the group's name
(HMAC-SHA256 of the name under the shared key: names never appear in clear), its rank and its
mode (and in a stateless pool, the address the provider serves on); then ``sig``, the
HMAC-SHA256 of everything before it under the shared key (the key never appears). A receiver
drops a message that is malformed, signed with another key, older than `max_age_s` or from the
future, or whose (sender, boot) sequence number is not newer than the last one accepted: a
replayed or reordered message is ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
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


@dataclass
class Freshness:
    """Drops replayed, reordered and stale messages (per sender and boot)."""

    max_age_s: float
    last: dict[tuple[str, str], int] = field(default_factory=dict)

    def check(self, msg: Message, now: float) -> None:
        """Accept the message (and remember its sequence number) or raise `Rejected`."""
        if abs(now - msg.time) > self.max_age_s:
            raise Rejected(f"stale or future message ({now - msg.time:+.1f} s)")
        key = (msg.sender, msg.boot)
        if msg.seq <= self.last.get(key, -1):
            raise Rejected(f"replayed message (seq {msg.seq})")
        self.last[key] = msg.seq
