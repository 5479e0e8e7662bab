"""The lab's job stream: what the load generator submits, the same on every run.

Each channel draws from a random generator of its own, seeded with the lab's seed and the
channel's name, so the k-th job of a channel has the same VO and duration whatever the timing
of the daemon's ticks (a tick late by a second submits two jobs of every channel at once) and
whatever the other channels drew. A benchmark can therefore read the stream in advance
(`trace`) and know which transfers a move will find running.
"""

from __future__ import annotations

import random

from config.site import Site
from infra.lab.settings import LabTransfers, lab_settings


def draw_duration(rng: random.Random, transfers: LabTransfers, channel: str) -> float:
    """One transfer duration from the channel's mixture."""
    t = transfers.profile(channel)
    lo, hi = t.long_s if rng.random() < t.long_fraction else t.short_s
    return round(rng.uniform(lo, hi), 2)


class Workload:
    """The jobs the lab submits, channel by channel, in order."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.vos = [a.vo for a in site.service.agents if a.vo]
        self.transfers = lab_settings(site).transfers
        seed = self.transfers.seed
        self._rngs = {
            ch: random.Random(f"{seed}/{ch}")  # noqa: S311 - a reproducible workload
            for ch in site.channels
        }
        # the estimates' errors from a stream of their own: the durations are the same at
        # every `eta_error`, so one workload is measured with exact and with wrong estimates
        self._eta_rngs = {
            ch: random.Random(f"{seed}/{ch}/eta")  # noqa: S311 - a reproducible workload
            for ch in site.channels
        }

    def next_job(self, channel: str) -> tuple[str | None, float]:
        """The channel's next job: its VO (None when the site has no VO agents) and duration."""
        rng = self._rngs[channel]
        vo = rng.choice(self.vos) if self.vos else None
        return vo, draw_duration(rng, self.transfers, channel)

    def eta_factor(self, channel: str) -> float:
        """What the estimate of the channel's next job's duration is off by: a factor in
        [1 - eta_error, 1 + eta_error] (1 when the lab's estimates are exact)."""
        e = self.transfers.eta_error
        return round(1.0 + self._eta_rngs[channel].uniform(-e, e), 4) if e else 1.0


def trace(site: Site, channel: str, n: int) -> list[float]:
    """The durations of the channel's first `n` jobs, as the load generator will submit them."""
    w = Workload(site)
    return [w.next_job(channel)[1] for _ in range(n)]
