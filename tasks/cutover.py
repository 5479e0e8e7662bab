"""The drain-aware cut-over's wait: read how long running transfers still need, until the rule
(`flows.plans.cutover.decide`) says a channel goes Inactive now.

One `EtaReader` per run, shared by the chains: each reading is one query on the site's
database (`database.transfer_eta_query`), reused by every chain that asks within `max_age_s`.
When the database does not answer, the channel goes Inactive at once: the move then behaves as
it does without a cut-over window, and says so.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from config.site import Site
from flows.plans.cutover import Cutover, decide
from tasks.adapters.db import DatabaseUnavailable, read_transfer_eta
from tasks.drain import Cancelled
from tasks.outcome import StepResult, now

if TYPE_CHECKING:
    from flows.plans.verbs import AwaitCutover
    from tasks.run_context import RunContext


class EtaReader:
    """The latest reading of the running transfers' remaining seconds, per channel."""

    def __init__(self, site: Site, max_age_s: float) -> None:
        self.site = site
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._at = -1e9
        self._eta: dict[str, list[float]] = {}

    def read(self) -> dict[str, list[float]]:
        """A reading no older than `max_age_s` (seconds still needed, as of now).

        Raises:
            DatabaseUnavailable: the database did not answer.
        """
        with self._lock:
            age = time.monotonic() - self._at
            if age > self.max_age_s:
                self._eta = read_transfer_eta(self.site)
                self._at = time.monotonic()
                age = 0.0
            return {c: [max(0.0, r - age) for r in v] for c, v in self._eta.items()}


def wait_for_cutover(
    reader: EtaReader,
    channel: str,
    drain_s: float,
    window_s: float,
    acting_since: float,
    poll_s: float,
    cancel: threading.Event,
    lead_s: float = 0.0,
) -> tuple[Cutover, float]:
    """Block until `channel` may go Inactive (`decide`), at most until `window_s` after
    `acting_since` (monotonic); with `lead_s`, that long before that moment.

    Returns:
        The decision that said go, and how long this call waited.

    Raises:
        InterruptedError: `cancel` was set while waiting.
    """
    began = time.monotonic()
    while True:
        waited = time.monotonic() - acting_since
        try:
            eta = reader.read()
        except DatabaseUnavailable as exc:
            return (
                Cutover(
                    after_s=0.0,
                    drain_s=0.0,
                    now=True,
                    reason=f"the transfers' remaining times are unknown ({exc}): at once",
                ),
                time.monotonic() - began,
            )
        d = decide(eta.get(channel, []), drain_s + lead_s, waited + lead_s, window_s)
        if d.now:
            return d, time.monotonic() - began
        if cancel.wait(max(0.02, min(poll_s, d.after_s))):
            raise InterruptedError("cancelled while waiting for the cut-over")


def await_cutover(ctx: RunContext, step: AwaitCutover) -> StepResult:
    """Wait until the step's channel may go Inactive (its cut-over), or prepare for it.

    Raises:
        Cancelled: the run was cancelled meanwhile.
    """
    started = now()
    (channel,) = step.channels
    try:
        decision, waited = wait_for_cutover(
            ctx.eta(),
            channel,
            step.drain_s,
            step.window_s,
            ctx.acting_since,
            ctx.poll_s,
            ctx.cancel,
            lead_s=step.lead_s,
        )
    except InterruptedError as exc:
        raise Cancelled(str(exc)) from exc
    when = f"after waiting {waited:.1f} s" if waited >= 0.05 else "at once"
    if step.lead_s:
        sentence = (
            f"{channel}: its cut-over is at most {step.lead_s:g} s away ({when}): "
            "preparing the target"
        )
    else:
        sentence = f"{channel}: going Inactive {when}: {decision.reason}"
    return StepResult(
        host=step.host,
        verb=step.verb,
        sentence=sentence,
        started_at=started,
        ended_at=now(),
        measures={"waited_s": round(waited, 3), "expected_drain_s": decision.drain_s},
    )
