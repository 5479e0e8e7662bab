"""The figures of `handover bench geo` (`infra.bench.geo`): what one round measured, the
median and spread of each figure over a row's rounds, the checks each row must pass and the
lines the command prints.

Pure: no lab, no Prefect, no network. The bench builds the rounds; this module judges them.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Sequence
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field

#: the bench's rows, in the order they run
RowName = Literal["planned", "killed-ttl5", "killed-ttl60", "master-down", "flood"]
ROWS: tuple[RowName, ...] = ("planned", "killed-ttl5", "killed-ttl60", "master-down", "flood")
#: a lost write acknowledged this long before the reading's replicated point still counts as
#: within the window (the replica reports its lag in whole seconds)
WINDOW_SLACK_S = 1.0
#: the flood must send at least this many queries per round
FLOOD_MIN_QUERIES = 1000
#: each row's DNS TTL, title and default rounds (a round at 60 s takes over a minute)
TTL: dict[RowName, int] = {
    "planned": 5,
    "killed-ttl5": 5,
    "killed-ttl60": 60,
    "master-down": 5,
    "flood": 5,
}
TITLES: dict[RowName, str] = {
    "planned": "planned failover",
    "killed-ttl5": "killed site",
    "killed-ttl60": "killed site",
    "master-down": "one master down",
    "flood": "resolver flood during the switch",
}
DEFAULT_ROUNDS = 3
DEFAULT_ROUNDS_TTL60 = 2


class Spread(BaseModel):
    """The median and the range of one figure over a row's rounds (None: no round had it)."""

    median: float | None = None
    min: float | None = None
    max: float | None = None


def spread_of(values: Iterable[float | None]) -> Spread:
    """The median and min-max of `values`, leaving out the missing ones.

    Example:
        >>> spread_of([3.0, 1.0, None, 2.0])
        Spread(median=2.0, min=1.0, max=3.0)
    """
    got = [float(v) for v in values if v is not None]
    if not got:
        return Spread()
    return Spread(
        median=round(statistics.median(got), 3), min=round(min(got), 3), max=round(max(got), 3)
    )


class Flips(BaseModel):
    """How one querying client's answers changed during a failover."""

    #: its answers in order, each repeat of the previous one left out
    sequence: list[str]
    #: exactly the old address, then the new one
    flipped_once: bool
    #: an answer other than the new address after the new one was seen
    flipped_back: bool


def collapse(answers: Iterable[str]) -> list[str]:
    """`answers` without the repeats of the answer before each."""
    out: list[str] = []
    for a in answers:
        if not out or out[-1] != a:
            out.append(a)
    return out


def count_flips(answers: Sequence[str], old: str, new: str) -> Flips:
    """Whether the answers flipped from `old` to `new` exactly once and never back.

    Args:
        answers: what one client was answered, in order (repeats may be left in; an answer
            that was not an address, such as ``SERVFAIL``, counts as an answer of its own).
        old: the address before the failover.
        new: the address after it.
    """
    seq = collapse(answers)
    seen_new = False
    back = False
    for a in seq:
        if a == new:
            seen_new = True
        elif seen_new:
            back = True
    return Flips(sequence=seq, flipped_once=seq == [old, new], flipped_back=back)


def longest_gap(acknowledged_at: Iterable[float]) -> float:
    """The longest span between two consecutive acknowledged writes (seconds; 0 for fewer
    than two): the outage a client writing all along saw, failed writes or slow ones."""
    times = sorted(acknowledged_at)
    return round(max((b - a for a, b in itertools.pairwise(times)), default=0.0), 3)


def first_after(times: Iterable[float], after: float) -> float | None:
    """Seconds from `after` to the first of `times` at or after it (None: none)."""
    later = [t for t in times if t >= after]
    return round(min(later) - after, 3) if later else None


def outside_window(
    lost: Iterable[tuple[str | None, float]],
    lost_site: str,
    window_start: float,
    killed_at: float,
    slack_s: float = WINDOW_SLACK_S,
) -> int:
    """How many lost writes fall outside the loss window a failover stated.

    Args:
        lost: each lost write's (site that acknowledged it, when it was acknowledged).
        lost_site: the site that was lost.
        window_start: the last reading's replicated point (its time minus its lag).
        killed_at: when the site was lost.
        slack_s: tolerance before the replicated point (the lag's whole seconds).

    Returns:
        The writes lost that the lost site did not acknowledge between the replicated point
        and its loss: each a write the stated window does not cover.
    """
    return sum(
        1
        for site, done in lost
        if site != lost_site or not (window_start - slack_s <= done <= killed_at + slack_s)
    )


class Round(BaseModel):
    """What every round has: the direction of its failover and how long the flow took."""

    #: the figures of the kind, in the order they print: field -> label
    FIGURES: ClassVar[dict[str, str]] = {}
    direction: str
    flow_s: float


class PlannedRound(Round):
    """A planned failover with clients writing through the name."""

    FIGURES: ClassVar[dict[str, str]] = {
        "outage_s": "outage (longest span without an acknowledged write) s",
        "flow_s": "flow s",
        "acknowledged": "writes acknowledged",
        "lost": "writes lost",
        "fenced_accepts": "writes accepted by a fenced side",
    }
    kind: Literal["planned"] = "planned"
    outage_s: float
    acknowledged: int
    lost: int
    fenced_accepts: int


class KilledRound(Round):
    """The active site killed under the clients' writes, then failed over."""

    FIGURES: ClassVar[dict[str, str]] = {
        "promoted_s": "kill -> target promoted s",
        "serving_s": "kill -> first write at the target via a resolver with the old answer s",
        "clients_back_s": "kill -> the clients' first write acknowledged at the target s",
        "outage_s": "outage s",
        "flow_s": "flow s",
        "lag_transactions": "lag at the last reading, transactions",
        "lag_s": "lag at the last reading s",
        "reading_age_s": "reading's age at the kill s",
        "lost": "writes lost",
        "lost_outside_window": "writes lost outside the stated window",
        "fenced_accepts": "writes accepted by a fenced side",
    }
    kind: Literal["killed"] = "killed"
    promoted_s: float | None
    serving_s: float | None
    clients_back_s: float | None
    outage_s: float
    lag_s: float | None
    lag_transactions: int | None
    reading_age_s: float
    acknowledged: int
    lost: int
    lost_outside_window: int
    fenced_accepts: int


class MasterDownRound(Round):
    """A planned failover with the old active site's master stopped, then started again."""

    FIGURES: ClassVar[dict[str, str]] = {
        "flow_s": "flow s",
        "repaired_s": "master started -> the watch repaired it s",
        "watch_s": "watch s",
        "outage_s": "outage s",
        "masters_behind": "masters left behind",
        "lost": "writes lost",
        "fenced_accepts": "writes accepted by a fenced side",
    }
    kind: Literal["master-down"] = "master-down"
    masters_behind: int
    repaired: bool
    repaired_s: float
    watch_s: float
    outage_s: float
    acknowledged: int
    lost: int
    fenced_accepts: int


class FloodRound(Round):
    """A planned failover while clients flood one resolver with queries for the name."""

    FIGURES: ClassVar[dict[str, str]] = {
        "flow_s": "flow s",
        "queries": "queries sent",
        "answered": "queries answered",
        "lost": "queries lost (no answer within 2 s)",
        "qps": "queries per second",
        "flipped_once": "clients whose answers flipped exactly once",
        "flipped_back": "clients whose answers flipped back",
    }
    kind: Literal["flood"] = "flood"
    threads: int
    queries: int
    answered: int
    lost: int
    qps: float
    flipped_once: int
    flipped_back: int
    #: the answer sequences that did not flip exactly once
    not_once: list[list[str]] = Field(default_factory=list)


#: a round of any row
RoundKind = PlannedRound | KilledRound | MasterDownRound | FloodRound
AnyRound = Annotated[RoundKind, Field(discriminator="kind")]


def figures(rounds: Sequence[Round]) -> dict[str, Spread]:
    """The median and spread of each figure of the rounds' kind."""
    if not rounds:
        return {}
    return {name: spread_of(getattr(r, name) for r in rounds) for name in type(rounds[0]).FIGURES}


def checks(row: RowName, rounds: Sequence[Round]) -> dict[str, bool]:
    """What each round of `row` must show (every check over every round)."""
    out: dict[str, bool] = {}
    if row == "flood":
        flood = [r for r in rounds if isinstance(r, FloodRound)]
        out["queries lost 0"] = all(r.lost == 0 for r in flood)
        out[f"at least {FLOOD_MIN_QUERIES} queries"] = all(
            r.queries >= FLOOD_MIN_QUERIES for r in flood
        )
        out["answers flipped exactly once"] = all(
            r.flipped_once == r.threads and r.flipped_back == 0 for r in flood
        )
        return out
    if row.startswith("killed"):
        out["writes lost only within the stated window"] = all(
            isinstance(r, KilledRound) and r.lost_outside_window == 0 for r in rounds
        )
        # the link is cut before the kill: a round that lost nothing checked no window
        out["the writes of the cut link lost (the window checked)"] = all(
            isinstance(r, KilledRound) and r.lost > 0 for r in rounds
        )
    else:
        out["writes lost 0"] = all(getattr(r, "lost", 1) == 0 for r in rounds)
    out["writes accepted by a fenced side 0"] = all(
        getattr(r, "fenced_accepts", 1) == 0 for r in rounds
    )
    if row == "master-down":
        out["the masters left behind were repaired by the watch"] = all(
            isinstance(r, MasterDownRound) and r.repaired and r.masters_behind > 0 for r in rounds
        )
    return out


class Row(BaseModel):
    """One row of the bench: its rounds, the median and spread of each figure, its checks."""

    row: RowName
    title: str
    ttl_s: int
    #: the rounds asked, and the row's default
    rounds_asked: int
    rounds_default: int
    note: str = ""
    rounds: list[AnyRound] = Field(default_factory=list)
    figures: dict[str, Spread] = Field(default_factory=dict)
    checks: dict[str, bool] = Field(default_factory=dict)
    #: why the row stopped before its last round (None: it ran them all)
    error: str | None = None
    ok: bool = False


def judge(row: Row) -> Row:
    """`row` with its figures, checks and verdict filled in from its rounds."""
    row.figures = figures(row.rounds)
    row.checks = checks(row.row, row.rounds)
    row.ok = row.error is None and len(row.rounds) == row.rounds_asked and all(row.checks.values())
    return row


class GeoBench(BaseModel):
    """What `handover bench geo --json` prints."""

    bench: Literal["geo"] = "geo"
    #: the clients' write rate through the name, writes per second
    write_rate: float
    rows: list[Row]
    ok: bool
    summary: list[str]


def _num(name: str, v: float | None) -> str:
    """A figure as it prints: seconds and rates with two decimals, counts whole (a median of
    an even number of counts may end in .5)."""
    if v is None:
        return "-"
    if name.endswith("_s") or name == "qps":
        return f"{v:.2f}"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def summary_lines(rows: Sequence[Row], write_rate: float) -> list[str]:
    """The lines the command prints: per row its verdict, then every figure as its median and
    min-max over the rounds, then its checks."""
    lines = [
        f"geo failover on the bench's geo labs; clients write through the tool's name at "
        f"{write_rate:g}/s; each figure: median (min-max) over the rounds"
    ]
    for r in rows:
        verdict = "ok" if r.ok else "NOT ok"
        lines.append(
            f"  {r.title}, TTL {r.ttl_s} s, {len(r.rounds)}/{r.rounds_asked} rounds: {verdict}"
            + (f" ({r.note})" if r.note else "")
        )
        labels = type(r.rounds[0]).FIGURES if r.rounds else {}
        for name, s in r.figures.items():
            lines.append(
                f"    {labels.get(name, name)}: {_num(name, s.median)} "
                f"({_num(name, s.min)}-{_num(name, s.max)})"
            )
        if r.rounds:
            lines.append("    directions: " + ", ".join(x.direction for x in r.rounds))
        failed = [c for c, good in r.checks.items() if not good]
        lines.append(
            "    checks: "
            + (
                "all pass (" + "; ".join(r.checks) + ")"
                if not failed
                else "FAILED " + "; ".join(failed)
            )
        )
        if r.error:
            lines.append(f"    stopped: {r.error}")
    return lines
