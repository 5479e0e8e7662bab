"""When a channel goes Inactive: the drain-aware cut-over of a pipelined clean move (pure).

A channel set Inactive waits for the transfers it runs; one that has just begun a long transfer
makes its channel wait for all of it. Where the site can tell how long each running transfer
still needs (`database.transfer_eta_query`), a channel stays Active, serving, until its running
transfers all end within `drain_s`, and goes Inactive then; at the latest `window_s` after the
move began acting, whatever still runs. `decide` is the rule, applied by the plan (to the
snapshot's figures, to show the expected moment) and by the executor (to fresh figures, every
poll, until it says go).
"""

from __future__ import annotations

from pydantic import BaseModel


class Cutover(BaseModel):
    """A channel's cut-over: when it goes Inactive and the drain that leaves."""

    #: seconds from now (the figures' time) until the channel goes Inactive
    after_s: float
    #: the drain expected from that moment (the longest running transfer then)
    drain_s: float
    #: whether this is the moment (``after_s`` is 0)
    now: bool
    reason: str


def decide(remaining_s: list[float], drain_s: float, waited_s: float, window_s: float) -> Cutover:
    """The cut-over rule for one channel.

    Args:
        remaining_s: the seconds each running transfer of the channel still needs.
        drain_s: the longest drain the site accepts for going Inactive at once.
        waited_s: how long the move has been acting already.
        window_s: how long after the move began acting the channel may go Inactive at the latest.

    Returns:
        The moment (from now) and the drain it leaves, with the reason in words.
    """
    longest = max(remaining_s, default=0.0)
    left = max(0.0, window_s - waited_s)
    if not remaining_s:
        return Cutover(after_s=0.0, drain_s=0.0, now=True, reason="no transfer runs")
    if longest <= drain_s:
        return Cutover(
            after_s=0.0,
            drain_s=longest,
            now=True,
            reason=(
                f"its {_n(remaining_s)} {'ends' if len(remaining_s) == 1 else 'end'} within "
                f"{longest:.1f} s"
            ),
        )
    if left <= 0:
        return Cutover(
            after_s=0.0,
            drain_s=longest,
            now=True,
            reason=(
                f"the cut-over window of {window_s:g} s has ended; a transfer still needs "
                f"{longest:.1f} s"
            ),
        )
    wait = longest - drain_s
    if wait <= left:
        return Cutover(
            after_s=round(wait, 3),
            drain_s=drain_s,
            now=False,
            reason=(
                f"a transfer needs {longest:.1f} s more: going Inactive in {wait:.1f} s leaves "
                f"a drain of about {drain_s:g} s instead of {longest:.1f} s"
            ),
        )
    return Cutover(
        after_s=round(left, 3),
        drain_s=round(longest - left, 3),
        now=False,
        reason=(
            f"a transfer needs {longest:.1f} s more, beyond the cut-over window: going Inactive "
            f"at its end, in {left:.1f} s, leaves a drain of about {longest - left:.1f} s"
        ),
    )


def _n(remaining_s: list[float]) -> str:
    return "running transfer" if len(remaining_s) == 1 else f"{len(remaining_s)} running transfers"
